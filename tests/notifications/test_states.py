"""The delivery state machine (notifications/states.py), walked through the services that
make each move: for every move and every status, a delivery in that status moves to the
move's target if and only if the status is one of the move's sources."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from notifications import states
from notifications.models import (
    DeadLetter,
    Delivery,
    DeliverySchedule,
    Event,
    InboxItem,
    NotificationTemplate,
    NotificationType,
    QuietHoursPolicy,
    Recipient,
)
from notifications.services.deadletters import deadletters_replay
from notifications.services.dispatch import deliveries_dispatch
from notifications.services.feedback import delivery_track
from notifications.services.inbox import inapp_dispatch, inbox_mark_all_read
from notifications.services.scheduling import deliveries_release_due
from notifications.services.sending.claim import Claimed
from notifications.services.sending.prepare import DEFER, Job
from notifications.services.sending.record import jobs_record
from notifications.states import DeliveryStatus as S
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

STATUSES = list(S.values)


def test_the_table_names_every_status_and_every_move_follows_it() -> None:
    assert set(states.TRANSITIONS) == set(STATUSES)
    for source, targets in states.TRANSITIONS.items():
        assert targets <= set(STATUSES), source
    assert states.INITIAL <= set(STATUSES) and states.FINAL <= set(STATUSES)
    # Nothing leaves a final status except a dead-letter replay.
    for final in states.FINAL - {S.DEAD}:
        assert states.TRANSITIONS[final] == frozenset(), final
    for move in states.MOVES:
        assert all(states.allowed(source, move.target) for source in move.sources), move
    # Every allowed step is made by some move of the pipeline (or is a retry staying put).
    made = {(source, move.target) for move in states.MOVES for source in move.sources}
    table = {(source, target) for source, targets in states.TRANSITIONS.items() for target in targets}
    assert table - made <= {(S.RETRYING, S.RETRYING)}, table - made
    with pytest.raises(ValueError, match="not in TRANSITIONS"):
        states.Move("backwards", (S.READ,), S.PENDING)


def _type(title: str = "Hello {{ data.n }}") -> NotificationType:
    nt = NotificationTypeFactory()
    NotificationTemplate.objects.filter(notification_type=nt).update(
        content={"title": title, "body": "", "url": ""}
    )
    return nt


def _one_per_status(channel: str, nt: NotificationType | None = None) -> dict[str, Delivery]:
    """A delivery in each status, each of its own event and recipient."""
    nt = nt or _type()
    deliveries = {}
    for status in STATUSES:
        recipient: Recipient = RecipientFactory()
        event = Event.objects.create(
            notification_type=nt, recipient_ids=[recipient.id], request_fingerprint="x", data={"n": 1}
        )
        deliveries[status] = Delivery.objects.create(
            event=event, recipient=recipient, channel=channel, status=status, attempts=1
        )
    return deliveries


def _assert_walked(move: states.Move, before: dict[str, Delivery]) -> None:
    after = dict(Delivery.objects.filter(id__in=[d.id for d in before.values()]).values_list("id", "status"))
    for status, delivery in before.items():
        expected = move.target if status in move.sources else status
        assert after[delivery.id] == expected, (
            f"{move.name}: {status} became {after[delivery.id]}, not {expected}"
        )


def _release(deliveries: dict[str, Delivery]) -> None:
    past = timezone.now() - timedelta(seconds=1)
    DeliverySchedule.objects.bulk_create(
        DeliverySchedule(delivery=d, due_at=past) for d in deliveries.values()
    )
    deliveries_release_due()


def _inapp(deliveries: dict[str, Delivery]) -> None:
    inapp_dispatch(delivery_ids=[d.id for d in deliveries.values()])


def _read(deliveries: dict[str, Delivery]) -> None:
    for delivery in deliveries.values():
        InboxItem.objects.create(
            recipient_id=delivery.recipient_id,
            seq=1,
            delivery=delivery,
            event_id=delivery.event_id,
            notification_type="t",
            category="transactional",
        )
        inbox_mark_all_read(recipient_id=delivery.recipient_id)


def _receipt(kind: str) -> Callable[[dict[str, Delivery]], None]:
    def apply(deliveries: dict[str, Delivery]) -> None:
        for delivery in deliveries.values():
            delivery_track(
                delivery_id=delivery.id, kind=kind, provider="test", dedupe_key=f"{kind}-{delivery.id}"
            )

    return apply


def _replay(deliveries: dict[str, Delivery]) -> None:
    DeadLetter.objects.bulk_create(
        DeadLetter(delivery=d, channel=d.channel, notification_type="t", reason="x", attempts=1)
        for d in deliveries.values()
    )
    deadletters_replay(delivery_ids=[d.id for d in deliveries.values()])


def _no_provider(deliveries: dict[str, Delivery]) -> None:
    deliveries_dispatch([(d.id, d.channel) for d in deliveries.values()])


def _send_outcome(target: str) -> Callable[[dict[str, Delivery]], None]:
    """Record a send ending in ``target`` for every delivery, each claimed first."""

    def record(deliveries: dict[str, Delivery]) -> None:
        token = timezone.now() + timedelta(minutes=1)
        Delivery.objects.filter(id__in=[d.id for d in deliveries.values()]).update(claimed_until=token)
        jobs = []
        for d in deliveries.values():
            job = Job(claimed=Claimed(d.id, d.event_id, d.recipient_id, d.channel, 1, 0, 1))
            job.verdict = DEFER if target == S.RETRYING else target
            job.defer_until = (timezone.now() + timedelta(minutes=5)).timestamp()
            jobs.append(job)
        jobs_record(jobs, token)

    return record


WALKS: list[tuple[states.Move, str, Callable[[dict[str, Delivery]], None]]] = [
    (states.RELEASE, "inapp", _release),
    (states.INAPP_WRITTEN, "inapp", _inapp),
    (states.READ, "inapp", _read),
    *[(move, "email", _receipt(kind)) for kind, move in states.RECEIPTS.items()],
    (states.RECEIPT_DEFERRED, "email", _receipt("deferred")),
    (states.REPLAY, "inapp", _replay),
    (states.NO_PROVIDER, "webhook", _no_provider),
    *[(move, "push", _send_outcome(target)) for target, move in states.SEND_OUTCOMES.items()],
]


@pytest.mark.parametrize(("move", "channel", "apply"), WALKS, ids=[f"{w[0].name}" for w in WALKS])
def test_each_move_takes_exactly_its_sources_to_its_target(
    move: states.Move, channel: str, apply: Callable[[dict[str, Delivery]], None], settings: Any
) -> None:
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "webhook": []}
    deliveries = _one_per_status(channel)

    apply(deliveries)

    _assert_walked(move, deliveries)


def test_a_pending_in_app_delivery_that_cannot_be_rendered_ends_failed_never_delivered() -> None:
    # INAPP_UNRENDERABLE: claimed as delivered and failed in the same transaction.
    deliveries = _one_per_status("inapp", _type(title="{{ data.missing.deeper }}"))

    _inapp(deliveries)

    after = dict(
        Delivery.objects.filter(id__in=[d.id for d in deliveries.values()]).values_list("id", "status")
    )
    for status, delivery in deliveries.items():
        assert after[delivery.id] == (states.INAPP_UNRENDERABLE.target if status == S.PENDING else status)
    assert not InboxItem.objects.exists()


# --- status literals ------------------------------------------------------------------------

SERVICES = Path(__file__).resolve().parents[2] / "notifications" / "services"
_QUOTED_STATUS = re.compile(r"'(" + "|".join(STATUSES) + r")'")
_SQL = re.compile(r"\b(UPDATE|INSERT|SELECT|WHERE)\b")
_STATUS_NAMES = {"status", "status__in", "target", "verdict"}
# The words a service must not spell out: delivery statuses and quiet-hours policies.
_VOCABULARY = set(STATUSES) | set(QuietHoursPolicy.values)


def _literal_strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in _VOCABULARY else []
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [value for element in node.elts for value in _literal_strings(element)]
    return []


def _named_status(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name in _STATUS_NAMES or name.endswith("_policy")


def test_services_change_statuses_only_through_the_constants_of_the_state_machine() -> None:
    """No string literal stands for a status or policy in a service: not in SQL, not as a
    status= argument, not in a comparison with a status. (Literals of other vocabularies,
    such as the receipt kinds providers send, are not statuses.)"""
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SERVICES.parent.parent)}:{getattr(node, 'lineno', '?')}"
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _SQL.search(node.value)
                and _QUOTED_STATUS.search(node.value)
            ):
                found.append(f"{where} SQL literal {_QUOTED_STATUS.search(node.value).group(0)}")  # type: ignore[union-attr]
            elif isinstance(node, ast.keyword) and node.arg in _STATUS_NAMES:
                found += [f"{where} {node.arg}={value!r}" for value in _literal_strings(node.value)]
            elif isinstance(node, ast.Compare) and (
                _named_status(node.left) or any(_named_status(c) for c in node.comparators)
            ):
                for side in [node.left, *node.comparators]:
                    found += [f"{where} compared with {value!r}" for value in _literal_strings(side)]
    assert found == []


def test_the_architecture_document_shows_the_table_as_it_is() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    block = doc.split("<!-- transitions:start -->")[1].split("<!-- transitions:end -->")[0]
    rows = [line.strip("| ").split(" | ") for line in block.strip().splitlines()[2:]]
    documented = {
        source: frozenset() if targets == "—" else frozenset(targets.split(", ")) for source, targets in rows
    }
    assert documented == states.TRANSITIONS
