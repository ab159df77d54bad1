"""manage.py import_recipients: CSV or JSON lines through recipients_bulk_upsert."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from notifications.models import Recipient
from notifications.services import recipients as recipient_services
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _import(*args: str, stdout: io.StringIO | None = None) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of the command."""
    out, err = stdout or io.StringIO(), io.StringIO()
    try:
        call_command("import_recipients", *args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(str(exc))
        return out.getvalue(), err.getvalue(), exc.returncode
    return out.getvalue(), err.getvalue(), 0


def test_it_imports_a_csv_file_and_names_the_line_and_reason_of_each_refused_row(tmp_path: Path) -> None:
    RecipientFactory(external_id="u-2", name="Old", email="old@example.com")
    source = tmp_path / "people.csv"
    source.write_text(
        "external_id,name,email,phone,timezone\n"
        "u-1,Ana,ana@example.com,+1 415 555 2671,Europe/Lisbon\n"
        "u-2,Bea,,,\n"
        "u-3,Cy,,12345,\n"
        "u-1,Again,,,\n"
    )

    out, err, code = _import(str(source))

    assert code == 1
    assert "Created 1, updated 1, refused 2." in out
    assert "line 4: phone: '12345'" in err and "line 5: external_id: 'u-1' is already on line 2" in err
    ana = Recipient.objects.get(external_id="u-1")
    assert (ana.name, ana.phone, ana.timezone) == ("Ana", "+14155552671", "Europe/Lisbon")
    # An empty cell leaves the field as it was.
    assert Recipient.objects.filter(external_id="u-2").values_list("name", "email").get() == (
        "Bea",
        "old@example.com",
    )
    assert not Recipient.objects.filter(external_id="u-3").exists()


def test_it_reads_json_lines_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        json.dumps({"external_id": "j-1", "locale": "pt-BR"}),
        "",
        "{not json",
        json.dumps(["j-2"]),
        json.dumps({"external_id": "j-3", "email": "j3@example.com"}),
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))

    out, err, code = _import("-", "--format", "jsonl")

    assert code == 1 and "Created 2, updated 0, refused 2." in out
    assert (
        "line 3: non_field_errors: not JSON" in err and "line 4: non_field_errors: must be an object" in err
    )
    assert set(Recipient.objects.values_list("external_id", flat=True)) == {"j-1", "j-3"}


def test_it_exits_zero_when_every_row_is_stored(tmp_path: Path) -> None:
    source = tmp_path / "people.jsonl"
    source.write_text("".join(json.dumps({"external_id": f"p-{i}"}) + "\n" for i in range(3)))

    out, _, code = _import(str(source))

    assert code == 0 and "Created 3, updated 0, refused 0." in out


def test_it_writes_every_refused_row_to_the_errors_file_and_lists_only_the_first_ones(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("external_id,timezone\n" + "".join(f"b-{i},Mars/Olympus\n" for i in range(30)))
    errors_file = tmp_path / "refused.jsonl"

    _, err, code = _import(str(source), "--errors-file", str(errors_file), "--show-errors", "5")

    assert code == 1
    assert err.count("Mars/Olympus") == 5 and f"... and 25 more refused rows (all in {errors_file})" in err
    refused = [json.loads(line) for line in errors_file.read_text().splitlines()]
    assert [entry["line"] for entry in refused] == list(range(2, 32))
    assert refused[0]["external_id"] == "b-0" and "timezone" in refused[0]["errors"]


def test_it_sends_a_thousand_rows_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = recipient_services.recipients_bulk_upsert

    def counting(*, items: list[Any]) -> Any:
        calls.append(len(items))
        return real(items=items)

    monkeypatch.setattr(
        "notifications.management.commands.import_recipients.recipients_bulk_upsert", counting
    )
    source = tmp_path / "many.csv"
    source.write_text("external_id,name\n" + "".join(f"m-{i},M {i}\n" for i in range(2_500)))

    out, _, code = _import(str(source))

    assert code == 0 and calls == [1000, 1000, 500]
    assert "Created 2,500" in out and Recipient.objects.count() == 2_500


def test_it_shows_a_progress_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path: Path) -> None:
    source = tmp_path / "few.csv"
    source.write_text("external_id\nt-1\nt-2\n")

    on_terminal, _, _ = _import(str(source), stdout=Terminal())
    RecipientFactory()  # a second import of the same file updates
    plain, _, _ = _import(str(source))

    assert "\r[" in on_terminal and "100%" in on_terminal and "2 rows (2 created" in on_terminal
    assert "\r" not in plain and "2 rows: 0 created, 2 updated, 0 refused" in plain


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("id,name\nx,y\n", "unknown column(s) 'id'"), ("name\nx\n", "must name external_id")],
)
def test_it_refuses_a_csv_header_it_cannot_map(tmp_path: Path, content: str, fragment: str) -> None:
    source = tmp_path / "odd.csv"
    source.write_text(content)

    with pytest.raises(CommandError, match="header row") as refused:
        call_command("import_recipients", str(source), stdout=io.StringIO())

    assert fragment in str(refused.value) and not Recipient.objects.exists()


def test_it_asks_for_the_format_when_the_name_does_not_tell(tmp_path: Path) -> None:
    source = tmp_path / "people.txt"
    source.write_text("external_id\nx\n")

    with pytest.raises(CommandError, match="--format"):
        call_command("import_recipients", str(source), stdout=io.StringIO())
