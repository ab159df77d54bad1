"""A stream's live chat: posting, moderation, and who is watching.

Every socket of a stream's chat, on any web process, is in the stream's channel-layer
group (``chat_group``); the services here are the only ones that send to it, each change
once its transaction has committed, as ``{"type": "chat.frame", "frames": [...]}``. The
frames a client gets (DESIGN 4b):

- ``{"type": "message", "id", "author", "name", "text", "ts"}``: ``author`` is the poster's
  external id, ``name`` their display name; ``text`` is stored and sent as it was written
  (control characters other than newline removed, trimmed). HTML in it is text: the client
  escapes it when it shows it, nothing here strips or rewrites it.
- ``{"type": "deleted", "id"}``
- ``{"type": "moderation", "action": "mute", "target", "until", "minutes"}``,
  ``{"type": "moderation", "action": "ban" | "unban" | "moderator_add" | "moderator_remove",
  "target"}``, ``{"type": "moderation", "action": "slow_mode", "seconds"}``
- ``{"type": "viewers", "count"}``: distinct viewers (one however many tabs), announced at
  most every STREAMING_CHAT_VIEWERS_EVERY_SECONDS.

A message is refused (``ChatRefused``, whose ``field`` names the problem) when its text is
empty or longer than TEXT_MAX characters, holds a blocked word or phrase of the stream, or a
link where the stream allows none (``text``); when its poster is banned (``banned``) or muted
(``muted``); over the rate of STREAMING_CHAT_RATE (``rate``) or within the stream's slow-mode
interval of the poster's last message (``slow_mode``). The owner and moderators are exempt
from the rate and slow mode. Rates are counted in Redis over a sliding window (the fixed
windows of notifications/services/ratelimits.py would let twice the rate through across a
window's edge); when Redis does not answer, messages go through uncounted (logged), as the
notification caps fail open.

Moderation (the owner, or moderators the owner named with ``moderator_add``) writes one
``ModerationAction`` per change, in the transaction of the change, and refuses what would
change nothing (``ChatConflict``) so that the log holds only what happened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import unicodedata
import uuid
import weakref
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from notifications.models import Recipient
from realtime.redis_client import redis_async, redis_key, redis_sync
from streaming.chat_selectors import (
    chat_may_moderate,
    chat_message_in,
    chat_poster_standing,
    chat_sanctions_active,
    message_frame_fields,
)
from streaming.models import ChatMessage, ModerationAction, Moderator, Sanction, SanctionKind, Stream

log = logging.getLogger(__name__)

TEXT_MAX = 500
MUTE_MINUTES_MAX = 7 * 24 * 60
SLOW_MODE_SECONDS_MAX = 3600
# The channel-layer message type every chat frame travels in.
CHAT_FRAME = "chat.frame"

# Moderation actions, as the log and the frames name them.
DELETE = "delete"
MUTE = "mute"
BAN = "ban"
UNBAN = "unban"
SLOW_MODE = "slow_mode"
MODERATOR_ADD = "moderator_add"
MODERATOR_REMOVE = "moderator_remove"


class ChatRefused(Exception):
    """What was asked cannot be done; ``field`` names what is wrong, ``message`` says what
    was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ChatForbidden(ChatRefused):
    """The actor may not do this (not a moderator of the stream, not its owner)."""


class ChatConflict(ChatRefused):
    """It would change nothing: deleted already, banned already, not a moderator."""


def chat_group(stream_id: Any) -> str:
    """The channel-layer group of every socket of the stream's chat (group names allow
    ASCII letters, digits, ``-``, ``_`` and ``.`` only: the id, not the key)."""
    return f"stream-chat.{uuid.UUID(str(stream_id)).hex}"


# --- Text --------------------------------------------------------------------------------------


def chat_text_clean(text: str) -> str:
    """The text as it is stored: control characters other than newline removed (a "\\r\\n"
    becomes "\\n"; NUL, escape sequences and bells go), then trimmed. Nothing else changes."""
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) != "Cc").strip()


# Something a viewer could follow: a scheme (http://, ftp://), "www.", or a name ending in
# a common top-level domain. A bare "node.js" or "e.g." is not a link.
_TLDS = (
    "com|net|org|edu|gov|io|gg|tv|me|co|ly|be|app|dev|xyz|info|biz|link|site|online|live|"
    "stream|shop|club|top|ru|de|uk|fr|cn|us|ca|au|in|nl|br|jp|es|it|pl|eu|ch|se|no|fi|cz"
)
_LINK = re.compile(
    r"(?i)(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S"
    rf"|\b[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.(?:{_TLDS})\b"
)


def chat_text_has_link(text: str) -> bool:
    return _LINK.search(text) is not None


@lru_cache(maxsize=256)
def _blocked_pattern(blocked_words: str) -> re.Pattern[str] | None:
    """One pattern for a stream's list (one word or phrase per line), matching whole words
    regardless of case; longest first, so a phrase wins over a word inside it."""
    phrases = sorted(
        {line.strip().casefold() for line in blocked_words.splitlines() if line.strip()}, key=len
    )
    if not phrases:
        return None
    alternatives = "|".join(re.escape(phrase) for phrase in reversed(phrases))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def chat_text_blocked(text: str, blocked_words: str) -> str | None:
    """The first blocked word or phrase of the list that ``text`` holds, or None."""
    pattern = _blocked_pattern(blocked_words)
    if pattern is None:
        return None
    found = pattern.search(text.casefold())
    return found.group(0) if found is not None else None


def _text_refusal(text: str, *, blocked_words: str, links_allowed: bool) -> ChatRefused | None:
    if not text:
        return ChatRefused("text", "Write something: the message is empty (or only spaces).")
    if len(text) > TEXT_MAX:
        return ChatRefused("text", f"At most {TEXT_MAX} characters; this message has {len(text)}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ChatRefused("text", "The text holds an unpaired surrogate character; send valid Unicode.")
    blocked = chat_text_blocked(text, blocked_words)
    if blocked is not None:
        return ChatRefused("text", f"{blocked!r} is not allowed in this chat.")
    if not links_allowed and chat_text_has_link(text):
        return ChatRefused("text", "Links are not allowed in this stream's chat.")
    return None


# --- Rate and slow mode --------------------------------------------------------------------------


def chat_rate() -> tuple[int, float] | None:
    """(messages, seconds) of STREAMING_CHAT_RATE, or None when it is off."""
    spec = str(settings.STREAMING_CHAT_RATE).strip()
    if spec.lower() in {"", "0", "off", "none"}:
        return None
    return _parse_rate(spec)


@lru_cache(maxsize=8)
def _parse_rate(spec: str) -> tuple[int, float]:
    try:
        count_text, seconds_text = spec.split("/")
        count, seconds = int(count_text), float(seconds_text)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"STREAMING_CHAT_RATE must look like 3/2 (messages/seconds) or off, got {spec!r}"
        ) from exc
    if count < 1 or not seconds > 0:
        raise ImproperlyConfigured(f"STREAMING_CHAT_RATE needs a count and seconds above 0, got {spec!r}")
    return count, seconds


# Both limits of one poster in one stream, in one round trip. KEYS: the poster's sliding
# window (a sorted set of their messages' moments) and the moment of their last message.
# ARGV: now (ms), the rate's count (0: none), its window (ms), the slow-mode interval (ms,
# 0: off), a member unique to this message, how long the last moment is kept (ms).
# Returns {0, 0} when the message may go (and counts it), {1, wait ms} in slow mode,
# {2, wait ms} over the rate. A refused message is not counted.
_LIMITS_LUA = """
local now = tonumber(ARGV[1])
local limit, window, slow = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if slow > 0 then
  local last = redis.call('GET', KEYS[2])
  if last then
    last = tonumber(last)
    if now < last + slow then return {1, last + slow - now} end
  end
end
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + window - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
end
redis.call('SET', KEYS[2], now, 'PX', tonumber(ARGV[6]))
return {0, 0}
"""


@lru_cache(maxsize=1)
def _limits_script() -> Any:
    return redis_sync().register_script(_LIMITS_LUA)


def _limits_consume(*, stream: Stream, poster_id: int, slow_mode_seconds: int, now: datetime) -> None:
    """Count the message against the poster's rate and slow mode; ChatRefused when over."""
    rate = chat_rate()
    if rate is None and slow_mode_seconds <= 0:
        return
    count, seconds = rate if rate is not None else (0, 0.0)
    now_ms = int(now.timestamp() * 1000)
    scope = f"{stream.id}:{poster_id}"
    try:
        verdict, wait_ms = _limits_script()(
            keys=[redis_key(f"chat:rate:{scope}"), redis_key(f"chat:last:{scope}")],
            args=[
                now_ms,
                count,
                int(seconds * 1000),
                slow_mode_seconds * 1000,
                f"{now_ms}-{uuid.uuid4().hex[:8]}",
                SLOW_MODE_SECONDS_MAX * 1000,
            ],
        )
    except redis.RedisError as exc:
        log.warning("chat rate and slow mode not checked (Redis unavailable): %s", exc)
        return
    wait = max(1, math.ceil(int(wait_ms) / 1000))
    if int(verdict) == 1:
        raise ChatRefused(
            "slow_mode",
            f"Slow mode is on: one message every {slow_mode_seconds} s; wait {wait} s before the next.",
        )
    if int(verdict) == 2:
        raise ChatRefused(
            "rate", f"At most {count} messages every {seconds:g} s; wait {wait} s before the next."
        )


# --- Broadcast ---------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _broadcast_after_commit(stream_id: Any, *frames: dict[str, Any]) -> None:
    """Send the frames to every socket of the stream's chat once the transaction commits
    (at once outside one). At-most-once, like the layer: a socket that missed them reads
    the history again when it reconnects."""
    group = chat_group(stream_id)
    message = {"type": CHAT_FRAME, "frames": list(frames)}

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(group, message)
        except (redis.RedisError, OSError) as exc:
            log.warning("chat frames of stream %s not broadcast: %s", stream_id, exc)

    transaction.on_commit(send, robust=True)


# --- Posting -----------------------------------------------------------------------------------


def chat_post(
    *, stream: Stream, author_recipient: Recipient, text: str, now: datetime | None = None
) -> ChatMessage:
    """Store ``text`` as a message of ``author_recipient`` in the stream's chat and send it
    to every viewer; returns the stored message. Raises ChatRefused naming the problem
    (see the module's docstring); a refused message is neither stored nor counted."""
    now = now or timezone.now()
    standing = chat_poster_standing(stream_id=stream.id, recipient_id=author_recipient.id, now=now)
    if standing is None:
        raise ChatRefused("stream", f"The stream {stream.key!r} no longer exists.")
    if standing.banned:
        raise ChatRefused("banned", "You are banned from this chat.")
    if standing.muted_until is not None:
        raise ChatRefused("muted", f"You are muted in this chat until {_iso(standing.muted_until)}.")
    cleaned = chat_text_clean(text)
    refusal = _text_refusal(
        cleaned, blocked_words=standing.blocked_words, links_allowed=standing.links_allowed
    )
    if refusal is not None:
        raise refusal
    if not standing.moderator:
        _limits_consume(
            stream=stream,
            poster_id=author_recipient.id,
            slow_mode_seconds=standing.slow_mode_seconds,
            now=now,
        )
    with transaction.atomic():
        message = ChatMessage.objects.create(
            stream_id=stream.id, author=author_recipient, text=cleaned, created_at=now
        )
        _broadcast_after_commit(stream.id, message_frame(message, author_recipient))
    return message


def message_frame(message: ChatMessage, author: Recipient) -> dict[str, Any]:
    return {
        "type": "message",
        **message_frame_fields(
            message_id=message.id,
            external_id=author.external_id,
            name=author.name,
            text=message.text,
            created_at=message.created_at,
        ),
    }


# --- Moderation --------------------------------------------------------------------------------


def _lock_as_moderator(stream: Stream, actor: Recipient) -> None:
    """Check that ``actor`` moderates the stream, holding its row for the transaction: one
    moderation change of a stream at a time, so "banned already" is never a race. A NO KEY
    lock, so messages (whose foreign key takes a KEY SHARE lock) are posted meanwhile."""
    Stream.objects.select_for_update(no_key=True).filter(id=stream.id).values_list("id").first()
    if not chat_may_moderate(stream=stream, recipient_id=actor.id):
        raise ChatForbidden(
            "moderator",
            f"{actor.external_id!r} does not moderate the chat of {stream.key!r}: "
            "only its owner and the moderators the owner named do.",
        )


def _sanctionable(stream: Stream, target: Recipient) -> None:
    if target.id == stream.owner_id:
        raise ChatRefused("target", "The stream's owner cannot be muted or banned in their own chat.")
    if chat_may_moderate(stream=stream, recipient_id=target.id):
        raise ChatRefused(
            "target",
            f"{target.external_id!r} moderates this chat: the owner removes them as moderator first.",
        )


def _log(
    stream: Stream,
    actor: Recipient,
    action: str,
    *,
    target: Recipient | None = None,
    message: ChatMessage | None = None,
    details: dict[str, Any] | None = None,
    now: datetime,
) -> ModerationAction:
    return ModerationAction.objects.create(
        stream_id=stream.id,
        moderator=actor,
        action=action,
        target=target,
        message=message,
        details=details or {},
        created_at=now,
    )


def chat_delete(
    *, stream: Stream, moderator: Recipient, message_id: int, now: datetime | None = None
) -> ModerationAction:
    """Delete a message of the stream's chat for everyone; returns the log entry. Only the
    owner deletes the owner's messages."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_as_moderator(stream, moderator)
        message = chat_message_in(stream_id=stream.id, message_id=message_id)
        if message is None:
            raise ChatRefused("message_id", f"No message {message_id} in the chat of {stream.key!r}.")
        if message.author_id == stream.owner_id and moderator.id != stream.owner_id:
            raise ChatForbidden("moderator", "Only the stream's owner deletes the owner's messages.")
        deleted = ChatMessage.objects.filter(id=message.id, deleted_at__isnull=True).update(
            deleted_at=now, deleted_by=moderator
        )
        if not deleted:
            raise ChatConflict("message_id", f"Message {message_id} was deleted already.")
        entry = _log(stream, moderator, DELETE, target=message.author, message=message, now=now)
        _broadcast_after_commit(stream.id, {"type": "deleted", "id": message.id})
    return entry


def chat_mute(
    *, stream: Stream, moderator: Recipient, target: Recipient, minutes: int, now: datetime | None = None
) -> ModerationAction:
    """Mute ``target`` for ``minutes`` (1 to MUTE_MINUTES_MAX): they read the chat but post
    nothing until then. A mute replaces the one in force, shorter or longer."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MUTE_MINUTES_MAX:
        raise ChatRefused("minutes", f"Expected a whole number of minutes from 1 to {MUTE_MINUTES_MAX}.")
    now = now or timezone.now()
    until = now + timedelta(minutes=minutes)
    with transaction.atomic():
        _lock_as_moderator(stream, moderator)
        _sanctionable(stream, target)
        chat_sanctions_active(stream_id=stream.id, recipient_id=target.id, now=now).filter(
            kind=SanctionKind.MUTE
        ).update(lifted_at=now)
        Sanction.objects.create(
            stream_id=stream.id, recipient=target, kind=SanctionKind.MUTE, until=until, created_at=now
        )
        entry = _log(
            stream,
            moderator,
            MUTE,
            target=target,
            details={"minutes": minutes, "until": _iso(until)},
            now=now,
        )
        _broadcast_after_commit(
            stream.id,
            {
                "type": "moderation",
                "action": MUTE,
                "target": target.external_id,
                "until": _iso(until),
                "minutes": minutes,
            },
        )
    return entry


def chat_ban(
    *, stream: Stream, moderator: Recipient, target: Recipient, now: datetime | None = None
) -> ModerationAction:
    """Ban ``target`` from posting in the stream's chat until ``chat_unban``; they may
    still read it (it is as public as the stream)."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_as_moderator(stream, moderator)
        _sanctionable(stream, target)
        active = chat_sanctions_active(stream_id=stream.id, recipient_id=target.id, now=now)
        if active.filter(kind=SanctionKind.BAN).exists():
            raise ChatConflict("target", f"{target.external_id!r} is banned from this chat already.")
        Sanction.objects.create(stream_id=stream.id, recipient=target, kind=SanctionKind.BAN, created_at=now)
        entry = _log(stream, moderator, BAN, target=target, now=now)
        _broadcast_after_commit(
            stream.id, {"type": "moderation", "action": BAN, "target": target.external_id}
        )
    return entry


def chat_unban(
    *, stream: Stream, moderator: Recipient, target: Recipient, now: datetime | None = None
) -> ModerationAction:
    """Lift every sanction in force on ``target`` (a ban, a mute): they may post again."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_as_moderator(stream, moderator)
        lifted = chat_sanctions_active(stream_id=stream.id, recipient_id=target.id, now=now).update(
            lifted_at=now
        )
        if not lifted:
            raise ChatConflict("target", f"{target.external_id!r} is neither banned nor muted in this chat.")
        entry = _log(stream, moderator, UNBAN, target=target, details={"lifted": lifted}, now=now)
        _broadcast_after_commit(
            stream.id, {"type": "moderation", "action": UNBAN, "target": target.external_id}
        )
    return entry


def chat_slow_mode(
    *, stream: Stream, moderator: Recipient, seconds: int, now: datetime | None = None
) -> ModerationAction:
    """Let each viewer post one message every ``seconds`` (0 turns slow mode off; at most
    SLOW_MODE_SECONDS_MAX). The owner and moderators are exempt."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= SLOW_MODE_SECONDS_MAX:
        raise ChatRefused(
            "seconds", f"Expected a whole number of seconds from 0 (off) to {SLOW_MODE_SECONDS_MAX}."
        )
    now = now or timezone.now()
    with transaction.atomic():
        _lock_as_moderator(stream, moderator)
        before = Stream.objects.filter(id=stream.id).values_list("slow_mode_seconds", flat=True).get()
        Stream.objects.filter(id=stream.id).update(slow_mode_seconds=seconds)
        entry = _log(stream, moderator, SLOW_MODE, details={"seconds": seconds, "before": before}, now=now)
        _broadcast_after_commit(stream.id, {"type": "moderation", "action": SLOW_MODE, "seconds": seconds})
    stream.slow_mode_seconds = seconds
    return entry


def _owner_only(stream: Stream, owner: Recipient) -> None:
    Stream.objects.select_for_update(no_key=True).filter(id=stream.id).values_list("id").first()
    if owner.id != stream.owner_id:
        raise ChatForbidden(
            "moderator", f"Only the owner of {stream.key!r} names and removes its moderators."
        )


def moderator_add(
    *, stream: Stream, owner: Recipient, recipient: Recipient, now: datetime | None = None
) -> ModerationAction:
    """Name ``recipient`` a moderator of the stream's chat (only its owner may)."""
    now = now or timezone.now()
    with transaction.atomic():
        _owner_only(stream, owner)
        if recipient.id == stream.owner_id:
            raise ChatRefused("target", "The owner moderates their own chat already.")
        _, created = Moderator.objects.get_or_create(
            stream_id=stream.id, recipient=recipient, defaults={"created_at": now}
        )
        if not created:
            raise ChatConflict("target", f"{recipient.external_id!r} moderates this chat already.")
        entry = _log(stream, owner, MODERATOR_ADD, target=recipient, now=now)
        _broadcast_after_commit(
            stream.id, {"type": "moderation", "action": MODERATOR_ADD, "target": recipient.external_id}
        )
    return entry


def moderator_remove(
    *, stream: Stream, owner: Recipient, recipient: Recipient, now: datetime | None = None
) -> ModerationAction:
    """Take ``recipient``'s moderation of the stream's chat away (only its owner may)."""
    now = now or timezone.now()
    with transaction.atomic():
        _owner_only(stream, owner)
        removed, _ = Moderator.objects.filter(stream_id=stream.id, recipient=recipient).delete()
        if not removed:
            raise ChatConflict("target", f"{recipient.external_id!r} does not moderate this chat.")
        entry = _log(stream, owner, MODERATOR_REMOVE, target=recipient, now=now)
        _broadcast_after_commit(
            stream.id, {"type": "moderation", "action": MODERATOR_REMOVE, "target": recipient.external_id}
        )
    return entry


# --- Viewers ---------------------------------------------------------------------------------------

# A socket is counted while its entry lives: renewed every VIEWERS_RENEW_SECONDS by its
# process, so the sockets of a process that died stop counting within VIEWERS_TTL_SECONDS.
VIEWERS_TTL_SECONDS = 90
VIEWERS_RENEW_SECONDS = 30
VIEWERS_RENEW_BATCH = 500

# The sockets of a stream: members "<viewer>|<connection>" of a sorted set scored by when
# they expire, and beside it each viewer's number of sockets (a hash), so that the count
# of distinct viewers, a viewer's tabs counted once, is the hash's length: no scan of the
# sockets however many watch. One script call adds or removes a socket (each at most once,
# so a repeated call changes nothing), uncounts the sockets that expired, counts, and
# decides whether to announce: not when the count is the one announced last; later (after
# the wait it returns, in ms) when one was announced within
# STREAMING_CHAT_VIEWERS_EVERY_SECONDS; else now. KEYS: the sockets, the viewers, the count
# announced last, the announcement throttle. ARGV: now (s), the operation (join, leave,
# count), the member, its expiry, the throttle (ms), the keys' TTL (s), whether to announce
# (1) or only count (0). Returns {count, -1 now | 0 no | wait ms}.
_VIEWERS_LUA = """
local sockets, viewers = KEYS[1], KEYS[2]
local now, op, member = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[6])
local function viewer_of(m) return string.match(m, '^[^|]*') end
local function uncount(m)
  local viewer = viewer_of(m)
  if redis.call('HINCRBY', viewers, viewer, -1) <= 0 then redis.call('HDEL', viewers, viewer) end
end
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', sockets, '-inf', now)) do uncount(expired) end
redis.call('ZREMRANGEBYSCORE', sockets, '-inf', now)
if op == 'join' then
  if redis.call('ZADD', sockets, tonumber(ARGV[4]), member) == 1 then
    redis.call('HINCRBY', viewers, viewer_of(member), 1)
  end
  redis.call('EXPIRE', sockets, ttl)
  redis.call('EXPIRE', viewers, ttl)
elseif op == 'leave' then
  if redis.call('ZREM', sockets, member) == 1 then uncount(member) end
end
local count = redis.call('HLEN', viewers)
if ARGV[7] ~= '1' then return {count, 0} end
if redis.call('GET', KEYS[3]) == tostring(count) then return {count, 0} end
local wait = redis.call('PTTL', KEYS[4])
if wait > 0 then return {count, wait} end
redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[5]))
redis.call('SET', KEYS[3], count, 'EX', ttl)
return {count, -1}
"""


def _viewers_keys(stream_id: Any) -> list[str]:
    parts = ("sockets", "viewers", "announced", "throttle")
    return [redis_key(f"chat:viewers:{stream_id}:{part}") for part in parts]


def _viewers_args(op: str, member: str, *, announce: bool) -> list[Any]:
    now = time.time()
    every_ms = max(1, int(settings.STREAMING_CHAT_VIEWERS_EVERY_SECONDS * 1000))
    return [now, op, member, now + VIEWERS_TTL_SECONDS, every_ms, VIEWERS_TTL_SECONDS * 2, int(announce)]


def _seat(viewer: str, connection: str) -> str:
    return f"{viewer.replace('|', '/')}|{connection}"


@lru_cache(maxsize=1)
def _viewers_script() -> Any:
    return redis_sync().register_script(_VIEWERS_LUA)


def chat_viewers_count(*, stream_id: Any) -> int:
    """How many distinct viewers have the stream's chat open now (Redis; raises
    redis.RedisError when it does not answer)."""
    count, _ = _viewers_script()(
        keys=_viewers_keys(stream_id), args=_viewers_args("count", "", announce=False)
    )
    return int(count)


async def _viewers_changed(stream_id: Any, op: str, member: str) -> int:
    client = redis_async()
    count, state = await client.register_script(_VIEWERS_LUA)(
        keys=_viewers_keys(stream_id), args=_viewers_args(op, member, announce=True)
    )
    count, state = int(count), int(state)
    if state < 0:
        await _viewers_announce(stream_id, count)
    elif state > 0:
        _viewers_recheck_later(stream_id, state / 1000)
    return count


async def _viewers_announce(stream_id: Any, count: int) -> None:
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(
            chat_group(stream_id), {"type": CHAT_FRAME, "frames": [{"type": "viewers", "count": count}]}
        )


class _LoopViewers:
    """The chat sockets of one event loop: renewed together by one task (batched pipelines)
    while there are any, and the re-counts waiting for a stream's throttle to pass (one per
    stream, however many sockets joined or left meanwhile)."""

    def __init__(self) -> None:
        self.seats: dict[tuple[str, str], None] = {}
        self.renewer: asyncio.Task[None] | None = None
        self.rechecks: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def add(self, stream_id: str, member: str) -> None:
        self.seats[(stream_id, member)] = None
        if self.renewer is None or self.renewer.done():
            self.renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    def discard(self, stream_id: str, member: str) -> None:
        self.seats.pop((stream_id, member), None)
        if not self.seats and self.renewer is not None:
            self.renewer.cancel()
            self.renewer = None

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(VIEWERS_RENEW_SECONDS)
            await self.renew()

    async def renew(self) -> None:
        seats = list(self.seats)
        expiry = time.time() + VIEWERS_TTL_SECONDS
        for start in range(0, len(seats), VIEWERS_RENEW_BATCH):
            pipe = redis_async().pipeline(transaction=False)
            for stream_id, member in seats[start : start + VIEWERS_RENEW_BATCH]:
                sockets, viewers = _viewers_keys(stream_id)[:2]
                # XX: a socket that left meanwhile is not brought back.
                pipe.zadd(sockets, {member: expiry}, xx=True)
                pipe.expire(sockets, VIEWERS_TTL_SECONDS * 2)
                pipe.expire(viewers, VIEWERS_TTL_SECONDS * 2)
            try:
                await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                # Renewed again at the next turn, well within the TTL.
                log.warning("chat viewers not renewed: %s", exc)

    def recheck_later(self, stream_id: str, delay: float) -> None:
        if stream_id in self.rechecks:
            return
        loop = asyncio.get_running_loop()
        self.rechecks[stream_id] = loop.call_later(delay + 0.01, self._recheck, stream_id)

    def _recheck(self, stream_id: str) -> None:
        self.rechecks.pop(stream_id, None)
        task = asyncio.get_running_loop().create_task(self._recount(stream_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _recount(self, stream_id: str) -> None:
        try:
            await _viewers_changed(stream_id, "count", "")
        except (redis.RedisError, OSError) as exc:
            log.warning("viewer count of stream %s not announced: %s", stream_id, exc)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopViewers] = weakref.WeakKeyDictionary()


def _loop_viewers() -> _LoopViewers:
    loop = asyncio.get_running_loop()
    viewers = _loops.get(loop)
    if viewers is None:
        viewers = _loops[loop] = _LoopViewers()
    return viewers


def _viewers_recheck_later(stream_id: Any, delay: float) -> None:
    _loop_viewers().recheck_later(str(stream_id), delay)


async def chat_viewer_join(*, stream_id: Any, viewer: str, connection: str) -> int:
    """Count one more socket of ``viewer`` (one end user, or one anonymous socket) in the
    stream's chat; returns the distinct viewers now. Everyone is told the new count when
    it changed, at most every STREAMING_CHAT_VIEWERS_EVERY_SECONDS. Raises
    redis.RedisError when Redis does not answer."""
    member = _seat(viewer, connection)
    count = await _viewers_changed(str(stream_id), "join", member)
    _loop_viewers().add(str(stream_id), member)
    return count


async def chat_viewer_leave(*, stream_id: Any, viewer: str, connection: str) -> None:
    """The socket is gone: count it no more (a viewer with another tab open still counts)."""
    member = _seat(viewer, connection)
    _loop_viewers().discard(str(stream_id), member)
    await _viewers_changed(str(stream_id), "leave", member)
