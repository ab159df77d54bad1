"""The chat's services on their own (streaming/services/chat.py), with explicit moments:
the rate's sliding window and slow mode to the millisecond, what text is refused and what
is kept, mutes that end, who may moderate, one log entry per change and nothing written
when a change fails, and frames sent only once the change has committed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from notifications.models import Recipient
from realtime.redis_client import redis_async
from streaming.chat_selectors import chat_history, chat_sanction_of
from streaming.models import ChatMessage, ModerationAction, Moderator, Sanction, SanctionKind, Stream
from streaming.services import chat
from streaming.services.chat import (
    ChatConflict,
    ChatForbidden,
    ChatRefused,
    chat_ban,
    chat_delete,
    chat_group,
    chat_mute,
    chat_post,
    chat_slow_mode,
    chat_unban,
    moderator_add,
    moderator_remove,
)
from tests.streaming.test_chat import moderator_create, recipient_create, run, stream_create

pytestmark = pytest.mark.django_db


def refusal(stream: Stream, author: Recipient, text: str, now: datetime | None = None) -> ChatRefused:
    with pytest.raises(ChatRefused) as refused:
        chat_post(stream=stream, author_recipient=author, text=text, now=now)
    return refused.value


def moment(seconds: float) -> datetime:
    """A moment ``seconds`` after a fixed start (the windows are counted in Redis by the
    moments given, so each test's stream has windows of its own)."""
    return timezone.now().replace(microsecond=0) + timedelta(seconds=seconds)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- rate and slow mode ---------------------------------------------------------------------------


def test_the_rate_allows_three_messages_in_any_two_seconds_and_refuses_the_fourth(settings: Any) -> None:
    settings.STREAMING_CHAT_RATE = "3/2"
    stream, alice = stream_create(), recipient_create()
    start = moment(0)

    for offset in (0.0, 0.5, 1.0):
        chat_post(
            stream=stream, author_recipient=alice, text=f"at {offset}", now=start + timedelta(seconds=offset)
        )
    refused = refusal(stream, alice, "at 1.9", start + timedelta(seconds=1.9))

    assert refused.field == "rate"
    assert refused.message == "At most 3 messages every 2 s; wait 1 s before the next."
    # The first message leaves the window two seconds after it was sent: one more fits.
    chat_post(stream=stream, author_recipient=alice, text="at 2.0", now=start + timedelta(seconds=2.0))
    assert refusal(stream, alice, "at 2.1", start + timedelta(seconds=2.1)).field == "rate"
    assert ChatMessage.objects.filter(stream=stream).count() == 4


def test_the_rate_is_per_viewer_and_per_stream(settings: Any) -> None:
    settings.STREAMING_CHAT_RATE = "3/2"
    stream, other_stream = stream_create(), stream_create()
    alice, bob = recipient_create(), recipient_create()
    now = moment(0)
    for n in range(3):
        chat_post(stream=stream, author_recipient=alice, text=f"{n}", now=now)

    chat_post(stream=stream, author_recipient=bob, text="bob may", now=now)
    chat_post(stream=other_stream, author_recipient=alice, text="elsewhere too", now=now)

    assert refusal(stream, alice, "not alice", now).field == "rate"


def test_slow_mode_allows_one_message_per_interval(settings: Any) -> None:
    settings.STREAMING_CHAT_RATE = "off"
    stream, alice = stream_create(slow_mode_seconds=30), recipient_create()
    start = moment(0)
    chat_post(stream=stream, author_recipient=alice, text="one", now=start)

    refused = refusal(stream, alice, "too soon", start + timedelta(seconds=29.5))

    assert refused.field == "slow_mode"
    assert refused.message == "Slow mode is on: one message every 30 s; wait 1 s before the next."
    chat_post(stream=stream, author_recipient=alice, text="two", now=start + timedelta(seconds=30))


def test_the_owner_and_moderators_are_exempt_from_the_rate_and_slow_mode(settings: Any) -> None:
    settings.STREAMING_CHAT_RATE = "3/2"
    stream = stream_create(slow_mode_seconds=60)
    moderator = moderator_create(stream)
    now = moment(0)

    for poster in (stream.owner, moderator):
        for n in range(6):
            chat_post(stream=stream, author_recipient=poster, text=f"{n}", now=now)

    assert ChatMessage.objects.filter(stream=stream).count() == 12


def test_a_malformed_rate_setting_names_the_variable(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.STREAMING_CHAT_RATE = "three a second"
    with pytest.raises(ImproperlyConfigured, match="STREAMING_CHAT_RATE"):
        chat.chat_rate()


# --- text -----------------------------------------------------------------------------------------


def test_the_text_is_stored_as_written_less_control_characters_and_surrounding_space() -> None:
    stream, alice = stream_create(), recipient_create()

    message = chat_post(
        stream=stream, author_recipient=alice, text="\t <i>hi</i> &lt;\x00\x1b\r\nbye \u202e "
    )

    assert message.text == "<i>hi</i> &lt;\nbye \u202e"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "Write something: the message is empty (or only spaces)."),
        ("\x00\x01 \n", "Write something: the message is empty (or only spaces)."),
        ("z" * 501, "At most 500 characters; this message has 501."),
    ],
)
def test_empty_and_overlong_text_is_refused_naming_text(text: str, expected: str) -> None:
    stream, alice = stream_create(), recipient_create()

    refused = refusal(stream, alice, text)

    assert (refused.field, refused.message) == ("text", expected)


def test_five_hundred_characters_fit() -> None:
    stream, alice = stream_create(), recipient_create()
    assert len(chat_post(stream=stream, author_recipient=alice, text="é" * 500).text) == 500


def test_a_blocked_word_or_phrase_is_refused_whatever_its_case_but_not_inside_another_word() -> None:
    stream = stream_create(blocked_words="darn\n  bad phrase \n\n")
    alice = recipient_create()

    assert refusal(stream, alice, "well DARN it").message == "'darn' is not allowed in this chat."
    assert refusal(stream, alice, "a Bad Phrase here").message == "'bad phrase' is not allowed in this chat."
    chat_post(stream=stream, author_recipient=alice, text="darnedest thing, bad phrases")


@pytest.mark.parametrize(
    "text",
    [
        "see https://example.org/x",
        "go to www.example",
        "visit example.com now",
        "ftp://files",
        "Twitch.TV/me",
    ],
)
def test_a_link_is_refused_where_the_stream_allows_none(text: str) -> None:
    stream, alice = stream_create(links_allowed=False), recipient_create()

    refused = refusal(stream, alice, text)

    assert (refused.field, refused.message) == ("text", "Links are not allowed in this stream's chat.")


def test_text_that_only_looks_dotted_is_no_link_and_links_pass_where_allowed() -> None:
    closed, open_ = stream_create(links_allowed=False), stream_create(links_allowed=True)
    alice = recipient_create()

    chat_post(stream=closed, author_recipient=alice, text="node.js, e.g. 3.14, end.of sentence")
    chat_post(stream=open_, author_recipient=alice, text="https://example.org")


# --- sanctions ------------------------------------------------------------------------------------


def test_a_mute_refuses_messages_until_it_ends() -> None:
    stream, alice = stream_create(), recipient_create()
    start = moment(0)
    chat_mute(stream=stream, moderator=stream.owner, target=alice, minutes=5, now=start)

    refused = refusal(stream, alice, "hello?", start + timedelta(minutes=4, seconds=59))

    assert refused.field == "muted"
    assert refused.message == "You are muted in this chat until " + iso(start + timedelta(minutes=5)) + "."
    chat_post(stream=stream, author_recipient=alice, text="back", now=start + timedelta(minutes=5, seconds=1))


def test_a_new_mute_replaces_the_one_in_force() -> None:
    stream, alice = stream_create(), recipient_create()
    start = moment(0)
    chat_mute(stream=stream, moderator=stream.owner, target=alice, minutes=60, now=start)

    chat_mute(
        stream=stream, moderator=stream.owner, target=alice, minutes=1, now=start + timedelta(seconds=1)
    )

    sanction = chat_sanction_of(stream_id=stream.id, recipient_id=alice.id, now=start + timedelta(seconds=2))
    assert sanction is not None and sanction.until == start + timedelta(minutes=1, seconds=1)
    chat_post(stream=stream, author_recipient=alice, text="free", now=start + timedelta(minutes=2))


def test_a_ban_lasts_until_it_is_lifted_and_lifting_also_ends_a_mute() -> None:
    stream, alice = stream_create(), recipient_create()
    start = moment(0)
    chat_mute(stream=stream, moderator=stream.owner, target=alice, minutes=60, now=start)
    chat_ban(stream=stream, moderator=stream.owner, target=alice, now=start)

    assert refusal(stream, alice, "hi", start + timedelta(days=30)).field == "banned"

    entry = chat_unban(stream=stream, moderator=stream.owner, target=alice, now=start + timedelta(minutes=1))
    assert entry.details == {"lifted": 2}
    chat_post(stream=stream, author_recipient=alice, text="hi again", now=start + timedelta(minutes=2))


# --- who may moderate -----------------------------------------------------------------------------


def test_someone_who_does_not_moderate_is_refused_naming_moderator_and_nothing_changes() -> None:
    stream, alice, outsider = stream_create(), recipient_create(), recipient_create()
    message = chat_post(stream=stream, author_recipient=alice, text="hello")

    attempts = [
        lambda: chat_delete(stream=stream, moderator=outsider, message_id=message.id),
        lambda: chat_mute(stream=stream, moderator=outsider, target=alice, minutes=5),
        lambda: chat_ban(stream=stream, moderator=outsider, target=alice),
        lambda: chat_slow_mode(stream=stream, moderator=outsider, seconds=10),
        lambda: moderator_add(stream=stream, owner=outsider, recipient=alice),
    ]
    for attempt in attempts:
        with pytest.raises(ChatForbidden) as refused:
            attempt()
        assert refused.value.field == "moderator"

    assert ModerationAction.objects.filter(stream=stream).count() == 0
    assert not Sanction.objects.filter(stream=stream).exists()
    assert Stream.objects.get(id=stream.id).slow_mode_seconds == 0
    assert ChatMessage.objects.get(id=message.id).deleted_at is None


def test_only_the_owner_names_and_removes_moderators() -> None:
    stream, alice, bob = stream_create(), recipient_create(), recipient_create()
    moderator_add(stream=stream, owner=stream.owner, recipient=alice)

    with pytest.raises(ChatForbidden):
        moderator_add(stream=stream, owner=alice, recipient=bob)
    with pytest.raises(ChatConflict):
        moderator_add(stream=stream, owner=stream.owner, recipient=alice)
    chat_mute(stream=stream, moderator=alice, target=bob, minutes=1)

    moderator_remove(stream=stream, owner=stream.owner, recipient=alice)
    with pytest.raises(ChatForbidden):
        chat_ban(stream=stream, moderator=alice, target=bob)
    assert list(
        ModerationAction.objects.filter(stream=stream).order_by("id").values_list("action", flat=True)
    ) == [
        "moderator_add",
        "mute",
        "moderator_remove",
    ]


def test_neither_the_owner_nor_a_moderator_can_be_muted_or_banned() -> None:
    stream = stream_create()
    moderator, other = moderator_create(stream), moderator_create(stream)

    for target in (stream.owner, other):
        with pytest.raises(ChatRefused) as refused:
            chat_ban(stream=stream, moderator=moderator, target=target)
        assert refused.value.field == "target"
    assert not Sanction.objects.filter(stream=stream).exists()


def test_a_moderator_cannot_delete_the_owners_message_but_the_owner_can() -> None:
    stream = stream_create()
    moderator = moderator_create(stream)
    message = chat_post(stream=stream, author_recipient=stream.owner, text="owner speaking")

    with pytest.raises(ChatForbidden):
        chat_delete(stream=stream, moderator=moderator, message_id=message.id)
    chat_delete(stream=stream, moderator=stream.owner, message_id=message.id)


def test_what_would_change_nothing_is_a_conflict_and_is_not_logged() -> None:
    stream, alice = stream_create(), recipient_create()
    message = chat_post(stream=stream, author_recipient=alice, text="bye")
    chat_delete(stream=stream, moderator=stream.owner, message_id=message.id)
    chat_ban(stream=stream, moderator=stream.owner, target=alice)

    for attempt in (
        lambda: chat_delete(stream=stream, moderator=stream.owner, message_id=message.id),
        lambda: chat_ban(stream=stream, moderator=stream.owner, target=alice),
        lambda: moderator_remove(stream=stream, owner=stream.owner, recipient=alice),
    ):
        with pytest.raises(ChatConflict):
            attempt()
    chat_unban(stream=stream, moderator=stream.owner, target=alice)
    with pytest.raises(ChatConflict):
        chat_unban(stream=stream, moderator=stream.owner, target=alice)

    assert ModerationAction.objects.filter(stream=stream).count() == 3


def test_a_message_of_another_stream_cannot_be_deleted_through_this_one() -> None:
    stream, elsewhere, alice = stream_create(), stream_create(), recipient_create()
    message = chat_post(stream=elsewhere, author_recipient=alice, text="not yours")

    with pytest.raises(ChatRefused) as refused:
        chat_delete(stream=stream, moderator=stream.owner, message_id=message.id)

    assert refused.value.field == "message_id"
    assert ChatMessage.objects.get(id=message.id).deleted_at is None


@pytest.mark.parametrize(("minutes", "seconds"), [(0, -1), (7 * 24 * 60 + 1, 3601)])
def test_mute_minutes_and_slow_mode_seconds_out_of_range_are_refused_naming_them(
    minutes: int, seconds: int
) -> None:
    stream, alice = stream_create(), recipient_create()

    with pytest.raises(ChatRefused) as refused_mute:
        chat_mute(stream=stream, moderator=stream.owner, target=alice, minutes=minutes)
    with pytest.raises(ChatRefused) as refused_slow:
        chat_slow_mode(stream=stream, moderator=stream.owner, seconds=seconds)

    assert (refused_mute.value.field, refused_slow.value.field) == ("minutes", "seconds")


def test_each_change_is_logged_once_with_who_whom_and_what() -> None:
    stream, alice = stream_create(), recipient_create()
    moderator = moderator_create(stream)
    message = chat_post(stream=stream, author_recipient=alice, text="x")
    now = moment(0)

    chat_delete(stream=stream, moderator=moderator, message_id=message.id, now=now)
    chat_mute(stream=stream, moderator=moderator, target=alice, minutes=3, now=now)
    chat_slow_mode(stream=stream, moderator=moderator, seconds=15, now=now)

    log = list(ModerationAction.objects.filter(stream=stream).order_by("id"))
    assert [(e.action, e.moderator_id, e.target_id, e.message_id) for e in log] == [
        ("delete", moderator.id, alice.id, message.id),
        ("mute", moderator.id, alice.id, None),
        ("slow_mode", moderator.id, None, None),
    ]
    assert log[1].details == {
        "minutes": 3,
        "until": (now + timedelta(minutes=3)).isoformat().replace("+00:00", "Z"),
    }
    assert log[2].details == {"seconds": 15, "before": 0}


def test_a_change_that_fails_halfway_leaves_nothing_written(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, alice = stream_create(), recipient_create()

    def log_fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the log could not be written")

    monkeypatch.setattr(chat, "_log", log_fails)
    with pytest.raises(RuntimeError):
        chat_ban(stream=stream, moderator=stream.owner, target=alice)
    with pytest.raises(RuntimeError):
        chat_slow_mode(stream=stream, moderator=stream.owner, seconds=20)
    with pytest.raises(RuntimeError):
        moderator_add(stream=stream, owner=stream.owner, recipient=alice)

    assert not Sanction.objects.filter(stream=stream).exists()
    assert Stream.objects.get(id=stream.id).slow_mode_seconds == 0
    assert not Moderator.objects.filter(stream=stream).exists()


def test_the_history_leaves_deleted_messages_out() -> None:
    stream, alice = stream_create(), recipient_create()
    kept = chat_post(stream=stream, author_recipient=alice, text="kept")
    gone = chat_post(stream=stream, author_recipient=alice, text="gone")

    chat_delete(stream=stream, moderator=stream.owner, message_id=gone.id)

    assert [m["id"] for m in chat_history(stream_id=stream.id)] == [kept.id]


# --- viewers -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_socket_whose_process_died_stops_counting_once_its_entry_expires() -> None:
    stream = stream_create()

    async def scenario() -> None:
        await chat.chat_viewer_join(stream_id=stream.id, viewer="r1", connection="tab-1")
        await chat.chat_viewer_join(stream_id=stream.id, viewer="r1", connection="tab-2")
        assert await chat.chat_viewer_join(stream_id=stream.id, viewer="r2", connection="tab-3") == 2
        # r2's process died: nothing renewed its entry, which has now run out.
        sockets = chat._viewers_keys(stream.id)[0]
        await redis_async().zadd(sockets, {"r2|tab-3": 1.0}, xx=True)
        await chat.chat_viewer_leave(stream_id=stream.id, viewer="r1", connection="tab-1")
        await chat.chat_viewer_leave(stream_id=stream.id, viewer="r1", connection="tab-1")  # twice: no harm

        assert await sync_to_async(chat.chat_viewers_count)(stream_id=stream.id) == 1
        await chat.chat_viewer_leave(stream_id=stream.id, viewer="r1", connection="tab-2")
        assert await sync_to_async(chat.chat_viewers_count)(stream_id=stream.id) == 0

    run(scenario)


# --- frames only after commit ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_frames_go_out_only_once_the_change_commits() -> None:
    stream, alice = stream_create(), recipient_create()

    def mute_rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            chat_mute(stream=stream, moderator=stream.owner, target=alice, minutes=5)
            raise RuntimeError("the caller's transaction fails after the mute")

    async def scenario() -> None:
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add(chat_group(stream.id), channel)
        receiving = asyncio.ensure_future(layer.receive(channel))

        await sync_to_async(mute_rolled_back)()
        await sync_to_async(chat_ban)(stream=stream, moderator=stream.owner, target=alice)

        # Frames of one process arrive in the order they were sent: had the rolled-back mute
        # sent its frame, it would come first.
        message = await asyncio.wait_for(receiving, timeout=5)
        assert message == {
            "type": "chat.frame",
            "frames": [{"type": "moderation", "action": "ban", "target": alice.external_id}],
        }
        await layer.group_discard(chat_group(stream.id), channel)

    run(scenario)
    assert list(Sanction.objects.filter(stream=stream).values_list("kind", flat=True)) == [SanctionKind.BAN]
