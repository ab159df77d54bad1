"""``/ws/docs/{key}``: the y-websocket protocol, so a stock Yjs ``WebsocketProvider``
connects unchanged (``serverUrl = ws://host/ws/docs``, room name = the document's key).

On connect the socket is authenticated (``?token=`` or a session from our own pages) and
its user must be a member of the document: anyone else is refused before the upgrade
completes. The server then sends its state vector (sync step 1); the client answers with
what the server lacks (its offline edits) and asks for what it lacks (its own step 1).
Every update is stored (collaboration/services/updates.py) before it is relayed to the
document's other sockets, on this process or any other, through the channel layer's group
of the document. A viewer receives everything; its updates are refused and it is told
with a y-protocols auth message (permission denied). A malformed message, an update over
its size limit or one that would take the document over its limit closes that socket
alone, with a close reason that says why. Awareness messages (cursors, names) are relayed
as they come and kept in Redis (collaboration/services/awareness.py): a socket that joins
or asks (query-awareness) is sent every client's current state; when a socket goes, its
clients' states are cleared for every peer at once, and a client not heard of within the
awareness timeout (its process died) is cleared by the first socket of the document that
notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from collaboration import selectors
from collaboration.models import WRITING_ROLES
from collaboration.services import protocol
from collaboration.services.awareness import (
    awareness_current,
    awareness_expire,
    awareness_forget,
    awareness_record,
)
from collaboration.services.updates import (
    EMPTY_UPDATE,
    UpdateRefused,
    document_group,
    document_state,
    state_missing,
    state_vector,
    update_store,
)
from notifications.selectors import recipient_for_user
from realtime.auth import socket_authenticate

# Close codes (the application's own range, as realtime/auth.py's).
CLOSE_NOT_A_MEMBER = 4403
CLOSE_NO_DOCUMENT = 4404
CLOSE_MALFORMED = 4400
CLOSE_DOCUMENT_FULL = 4413
CLOSE_MESSAGE_TOO_BIG = 1009


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


class DocumentConsumer(AsyncWebsocketConsumer):
    document_id: int | None = None
    recipient_id: int | None = None
    group: str = ""
    writes = False
    # The awareness clients this socket spoke for, with their last clocks: cleared for
    # every peer when the socket goes, as a y-websocket server does.
    awareness_clocks: dict[int, int]
    sweeper: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.awareness_clocks = {}
        recipient_id, close_code = await socket_authenticate(
            self.scope, user_to_recipient=sync_to_async(_recipient_id_for_user)
        )
        if recipient_id is None:
            await self.close(code=close_code)
            return
        key = self.scope["url_route"]["kwargs"]["key"]
        document = await sync_to_async(selectors.document_by_key)(key)
        if document is None:
            await self.close(code=CLOSE_NO_DOCUMENT)
            return
        role = await sync_to_async(selectors.member_role)(document_id=document.id, recipient_id=recipient_id)
        if role is None:
            await self.close(code=CLOSE_NOT_A_MEMBER)
            return
        self.document_id, self.recipient_id = document.id, recipient_id
        self.writes = role in WRITING_ROLES
        self.group = document_group(document.id)
        # Joined before accepting, so no update stored after the state read below is missed.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        state = await sync_to_async(document_state)(document.id)
        await self.send(bytes_data=protocol.sync_step1(state_vector(state)))
        await self._send_awareness()
        self.sweeper = asyncio.create_task(self._sweep_awareness())

    async def disconnect(self, code: int) -> None:
        if not self.group:
            return
        if self.sweeper is not None:
            self.sweeper.cancel()
        await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.awareness_clocks:
            assert self.document_id is not None
            gone = [
                protocol.AwarenessEntry(client_id, clock + 1, None)
                for client_id, clock in self.awareness_clocks.items()
            ]
            with contextlib.suppress(redis.RedisError):
                await awareness_forget(self.document_id, list(self.awareness_clocks))
            await self._relay(protocol.awareness_message(protocol.awareness_update(gone)))

    async def _send_awareness(self) -> None:
        """Every client's current awareness state, to this socket (on joining, or asked)."""
        assert self.document_id is not None
        try:
            entries = await awareness_current(self.document_id)
        except redis.RedisError:
            return  # peers send theirs again within the timeout
        if entries:
            await self.send(bytes_data=protocol.awareness_message(protocol.awareness_update(entries)))

    async def _sweep_awareness(self) -> None:
        """Clear, for every peer, the clients of this document not heard of within the
        timeout: those of a process that died, whose sockets said nothing when they went."""
        assert self.document_id is not None
        period = max(0.2, settings.COLLAB_AWARENESS_TIMEOUT_SECONDS / 3)
        while True:
            # Spread over the period, so a document's sockets do not all look at once.
            await asyncio.sleep(period * random.uniform(0.75, 1.25))
            try:
                gone = await awareness_expire(self.document_id)
            except redis.RedisError:
                continue
            if gone:
                message = protocol.awareness_message(protocol.awareness_update(gone))
                await self.channel_layer.group_send(
                    self.group, {"type": "doc.message", "data": message, "origin": ""}
                )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is None:
            await self.close(code=CLOSE_MALFORMED, reason="binary y-websocket messages only")
            return
        try:
            message = protocol.parse(bytes_data)
        except protocol.ProtocolError as error:
            await self.close(code=CLOSE_MALFORMED, reason=str(error)[:120])
            return
        if isinstance(message, protocol.Sync):
            await self._sync_message(message)
        elif isinstance(message, protocol.Awareness):
            entries = protocol.awareness_entries(message.payload)  # parse() has checked it
            for entry in entries:
                if entry.state is None:
                    self.awareness_clocks.pop(entry.client_id, None)
                else:
                    self.awareness_clocks[entry.client_id] = entry.clock
            assert self.document_id is not None
            with contextlib.suppress(redis.RedisError):
                await awareness_record(self.document_id, entries)
            await self._relay(protocol.awareness_message(message.payload))
        else:
            await self._send_awareness()  # query-awareness

    async def _sync_message(self, message: protocol.Sync) -> None:
        assert self.document_id is not None
        if message.step == protocol.SYNC_STEP1:
            state = await sync_to_async(document_state)(self.document_id)
            try:
                missing = state_missing(state, message.payload)
            except ValueError:
                await self.close(code=CLOSE_MALFORMED, reason="sync step 1: not a Yjs state vector")
                return
            await self.send(bytes_data=protocol.sync_step2(missing))
            return
        if message.payload == EMPTY_UPDATE:
            return  # a client with nothing the server lacks answers step 1 with this
        if not self.writes:
            await self.send(bytes_data=protocol.permission_denied("viewers cannot edit this document"))
            return
        try:
            await sync_to_async(update_store)(
                document_id=self.document_id, data=message.payload, recipient_id=self.recipient_id
            )
        except UpdateRefused as refused:
            code = {"too_large": CLOSE_MESSAGE_TOO_BIG, "document_full": CLOSE_DOCUMENT_FULL}.get(
                refused.code, CLOSE_MALFORMED
            )
            await self.close(code=code, reason=refused.message[:120])
            return
        await self._relay(protocol.sync_update(message.payload))

    async def _relay(self, data: bytes) -> None:
        await self.channel_layer.group_send(
            self.group, {"type": "doc.message", "data": data, "origin": self.channel_name}
        )

    async def doc_message(self, event: dict[str, Any]) -> None:
        if event.get("origin") != self.channel_name:
            await self.send(bytes_data=event["data"])
