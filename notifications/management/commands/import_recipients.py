"""Import recipients from a CSV file (header row) or JSON lines, through the same service
as POST /api/v1/recipients/bulk/ (recipients_bulk_upsert), a thousand rows per call."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.services.recipients import RECIPIENTS_BULK_MAX, recipients_bulk_upsert
from notifications.services.validation import RECIPIENT_FIELDS

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
COLUMNS = ("external_id", *RECIPIENT_FIELDS)
# Without a terminal, a progress line at most this often (and after the last batch).
PLAIN_PROGRESS_SECONDS = 5.0


@dataclass
class Row:
    line: int
    item: Any = None
    problem: dict[str, list[str]] | None = None  # refused before it reached the service


@dataclass
class Tally:
    created: int = 0
    updated: int = 0
    refused: list[tuple[int, Any, dict[str, Any]]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.created + self.updated + len(self.refused)


class CountingLines:
    """Iterates the lines of a text stream and counts the bytes read (for the progress bar)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.stream:
            self.bytes_read += len(line.encode("utf-8"))
            yield line


def csv_rows(lines: Iterable[str]) -> Iterator[Row]:
    """Rows of a CSV file whose first row names the columns. An empty cell leaves the field
    as it is (CSV cannot tell "empty" from "not given")."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or "external_id" not in header:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}; " if unknown else ""
        raise CommandError(
            f"{problem}the header row must name external_id and any of {', '.join(RECIPIENT_FIELDS)}"
        )
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            width = {"non_field_errors": [f"has {len(cells)} cells; the header has {len(header)}"]}
            yield Row(line=reader.line_num, problem=width)
            continue
        yield Row(
            line=reader.line_num,
            item={name: cell for name, cell in zip(header, cells, strict=True) if cell != ""},
        )


def jsonl_rows(lines: Iterable[str]) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Row(
                line=number, problem={"non_field_errors": [f"not JSON: {exc.msg} at column {exc.colno}"]}
            )
            continue
        yield Row(line=number, item=item)


def batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Command(BaseCommand):
    help = (
        "Create or update recipients from a CSV file with a header row (external_id, name, email, "
        "phone, locale, timezone) or from JSON lines. '-' reads standard input. Exits non-zero "
        "when any row is refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Path of the file, or - for standard input")
        parser.add_argument("--format", choices=["csv", "jsonl"], help="Default: from the file's extension")
        parser.add_argument("--errors-file", help="Write every refused row here, one JSON object per line")
        parser.add_argument("--show-errors", type=int, default=20, help="Refused rows listed in the summary")

    def handle(self, *args: Any, **options: Any) -> None:
        path: str = options["file"]
        kind = options["format"] or FORMATS.get(os.path.splitext(path)[1].lower())
        if kind is None:
            raise CommandError(
                "cannot tell the format from the file name; give --format csv or --format jsonl"
            )
        if path == "-":
            # Bytes decoded here, so a UTF-8 BOM (spreadsheet exports) is dropped as for files.
            buffer = getattr(sys.stdin, "buffer", None)
            stream: TextIO = (
                io.TextIOWrapper(buffer, encoding="utf-8-sig", newline="")
                if buffer is not None
                else sys.stdin
            )
        else:
            try:
                stream = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        size = None if path == "-" else os.path.getsize(path)
        lines = CountingLines(stream)
        rows = csv_rows(lines) if kind == "csv" else jsonl_rows(lines)
        try:
            tally = self._import(rows, lines, size)
        finally:
            if path != "-":
                stream.close()
        self._summarise(tally, options["show_errors"], options["errors_file"])
        if tally.refused:
            raise CommandError(f"{len(tally.refused)} row(s) refused", returncode=1)

    def _import(self, rows: Iterable[Row], lines: CountingLines, size: int | None) -> Tally:
        tally = Tally()
        # external_id -> line of the row that stored it: a later row naming it again is
        # refused, as a later item of one bulk call is (first row wins, whatever the batch).
        stored: dict[str, int] = {}
        last_report = time.monotonic()
        for batch in batches(rows, RECIPIENTS_BULK_MAX):
            sent: list[Row] = []
            for row in batch:
                external_id = row.item.get("external_id") if isinstance(row.item, dict) else None
                if row.problem is None and isinstance(external_id, str) and external_id in stored:
                    row.problem = {
                        "external_id": [f"{external_id!r} is already on line {stored[external_id]}"]
                    }
                if row.problem is not None:
                    tally.refused.append((row.line, row.item, row.problem))
                else:
                    sent.append(row)
            for row, result in zip(
                sent, recipients_bulk_upsert(items=[row.item for row in sent]), strict=True
            ):
                if result.duplicate_of is not None:
                    earlier = sent[result.duplicate_of].line
                    problem = {"external_id": [f"{row.item['external_id']!r} is already on line {earlier}"]}
                    tally.refused.append((row.line, row.item, problem))
                    continue
                if result.status == "error":
                    tally.refused.append((row.line, row.item, result.errors or {}))
                    continue
                stored[str(result.external_id)] = row.line
                if result.status == "created":
                    tally.created += 1
                else:
                    tally.updated += 1
            if self.stdout.isatty():
                self._progress_bar(tally, lines.bytes_read, size)
            elif time.monotonic() - last_report >= PLAIN_PROGRESS_SECONDS:
                self._progress_line(tally)
                last_report = time.monotonic()
        if self.stdout.isatty():
            self.stdout.write("")
        else:
            self._progress_line(tally)
        return tally

    def _progress_bar(self, tally: Tally, bytes_read: int, size: int | None) -> None:
        counts = f"{tally.done:,} rows ({tally.created:,} created, {tally.updated:,} updated, {len(tally.refused):,} refused)"
        if size:
            share = min(1.0, bytes_read / size)
            filled = int(share * 30)
            self.stdout.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} {counts}", ending="")
        else:
            self.stdout.write(f"\r{counts}", ending="")
        self.stdout.flush()

    def _progress_line(self, tally: Tally) -> None:
        self.stdout.write(
            f"{tally.done:,} rows: {tally.created:,} created, {tally.updated:,} updated, "
            f"{len(tally.refused):,} refused"
        )

    def _summarise(self, tally: Tally, show: int, errors_file: str | None) -> None:
        self.stdout.write(
            f"Created {tally.created:,}, updated {tally.updated:,}, refused {len(tally.refused):,}."
        )
        refused = sorted(tally.refused, key=lambda entry: entry[0])
        for line, _, errors in refused[:show]:
            reasons = "; ".join(
                f"{name}: {' '.join(map(str, messages))}" for name, messages in errors.items()
            )
            self.stderr.write(f"line {line}: {reasons}")
        if len(refused) > show:
            hint = f" (all in {errors_file})" if errors_file else "; --errors-file writes them all"
            self.stderr.write(f"... and {len(refused) - show:,} more refused rows{hint}")
        if errors_file:
            with open(errors_file, "w", encoding="utf-8") as out:
                for line, item, errors in refused:
                    external_id = item.get("external_id") if isinstance(item, dict) else None
                    out.write(json.dumps({"line": line, "external_id": external_id, "errors": errors}) + "\n")
