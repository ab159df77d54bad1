"""Reads of a stream's chat: its recent messages (the socket's history frame), who may
moderate it, a viewer's standing (sanctions, and the chat settings that apply to what they
post) and the moderation log, which only its moderators read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery

from notifications.models import Recipient
from streaming.models import ChatMessage, ModerationAction, Moderator, Sanction, SanctionKind, Stream

# Messages in the history frame a socket gets on connecting.
HISTORY_MAX = 50


def chat_author(*, recipient_id: int) -> Recipient | None:
    """The recipient a socket's token names (None: deleted since the token was issued)."""
    return Recipient.objects.filter(id=recipient_id).first()


def message_frame_fields(
    *, message_id: int, external_id: str, name: str, text: str, created_at: datetime
) -> dict[str, Any]:
    """A message as frames carry it: ``{"id", "author", "name", "text", "ts"}``. ``author``
    is the poster's external id, ``name`` their display name (may be empty); the text is
    as stored (a client escapes it when it shows it)."""
    return {
        "id": message_id,
        "author": external_id,
        "name": name,
        "text": text,
        "ts": created_at.isoformat().replace("+00:00", "Z"),
    }


def chat_history(*, stream_id: Any, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
    """The stream's last ``limit`` messages that are not deleted, oldest first (one query on
    the (stream, -id) index)."""
    rows = (
        ChatMessage.objects.filter(stream_id=stream_id, deleted_at__isnull=True)
        .order_by("-id")
        .values_list("id", "author__external_id", "author__name", "text", "created_at")[:limit]
    )
    return [
        message_frame_fields(message_id=i, external_id=ext, name=name, text=text, created_at=at)
        for i, ext, name, text, at in reversed(list(rows))
    ]


def chat_may_moderate(*, stream: Stream, recipient_id: int | None) -> bool:
    """Whether ``recipient_id`` may moderate the stream's chat: its owner, or a moderator
    the owner named."""
    if recipient_id is None:
        return False
    if stream.owner_id == recipient_id:
        return True
    return Moderator.objects.filter(stream_id=stream.id, recipient_id=recipient_id).exists()


def _active(now: datetime) -> Q:
    return Q(lifted_at__isnull=True) & (Q(until__isnull=True) | Q(until__gt=now))


def chat_sanction_of(*, stream_id: Any, recipient_id: int, now: datetime) -> Sanction | None:
    """The sanction in force on ``recipient_id`` in the stream's chat: a ban before any
    mute, and of several mutes the one that lasts longest; None when there is none."""
    active = Sanction.objects.filter(_active(now), stream_id=stream_id, recipient_id=recipient_id)
    ban = active.filter(kind=SanctionKind.BAN).order_by("-id").first()
    if ban is not None:
        return ban
    return active.filter(kind=SanctionKind.MUTE).order_by("-until").first()


def chat_sanctions_active(*, stream_id: Any, recipient_id: int, now: datetime) -> QuerySet[Sanction]:
    """Every sanction in force on ``recipient_id`` in the stream's chat."""
    return Sanction.objects.filter(_active(now), stream_id=stream_id, recipient_id=recipient_id)


@dataclass(frozen=True)
class PosterStanding:
    """What decides whether a message of this poster may go out now."""

    owner_id: int
    links_allowed: bool
    slow_mode_seconds: int
    blocked_words: str
    moderator: bool
    banned: bool
    muted_until: datetime | None


def chat_poster_standing(*, stream_id: Any, recipient_id: int, now: datetime) -> PosterStanding | None:
    """The stream's chat settings as they are now, and the poster's standing in it, in one
    query (it runs for every message); None when the stream is gone."""
    sanctions = Sanction.objects.filter(_active(now), stream_id=OuterRef("id"), recipient_id=recipient_id)
    row = (
        Stream.objects.filter(id=stream_id)
        .annotate(
            is_moderator=Q(owner_id=recipient_id)
            | Exists(Moderator.objects.filter(stream_id=OuterRef("id"), recipient_id=recipient_id)),
            is_banned=Exists(sanctions.filter(kind=SanctionKind.BAN)),
            muted_until=Subquery(
                sanctions.filter(kind=SanctionKind.MUTE).order_by("-until").values("until")[:1]
            ),
        )
        .values_list(
            "owner_id",
            "links_allowed",
            "slow_mode_seconds",
            "blocked_words",
            "is_moderator",
            "is_banned",
            "muted_until",
        )
        .first()
    )
    if row is None:
        return None
    owner_id, links, slow, blocked, moderator, banned, muted_until = row
    return PosterStanding(
        owner_id=owner_id,
        links_allowed=links,
        slow_mode_seconds=slow,
        blocked_words=blocked,
        moderator=bool(moderator),
        banned=bool(banned),
        muted_until=muted_until,
    )


def chat_message_in(*, stream_id: Any, message_id: int) -> ChatMessage | None:
    """The message ``message_id`` of this stream's chat, with its author; None when the
    stream has none of that id."""
    return ChatMessage.objects.select_related("author").filter(stream_id=stream_id, id=message_id).first()


def chat_moderation_log(*, stream: Stream, recipient_id: int) -> QuerySet[ModerationAction] | None:
    """The stream's moderation log, newest first, for one of its moderators (the owner or
    a named moderator); None for anyone else."""
    if not chat_may_moderate(stream=stream, recipient_id=recipient_id):
        return None
    return (
        ModerationAction.objects.filter(stream_id=stream.id)
        .select_related("moderator", "target")
        .order_by("-id")
    )
