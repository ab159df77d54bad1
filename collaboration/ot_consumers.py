"""``/ws/docs/{key}/ot``: a plain-text document edited by operational transformation, the
server ordering the operations (collaboration/services/ot.py has the text type and the
ordering; this consumer authenticates, parses frames and calls it).

JSON text frames. On connect (members only, as ``/ws/docs/{key}``; plain-text documents
only) the server sends ``{"type": "init", "version": v, "text": t}``; a client coming back
with ``?version=n`` (the last version it had) gets ``{"type": "resume", "from": n,
"version": v}`` and then every operation after n instead. Then:

- client: ``{"type": "op", "version": base, "op": [...], "seq": n, "client": id}``, one at
  a time (the next once the last is acknowledged), made on the text at ``base``;
- server, to the sender: ``{"type": "ack", "seq": n, "version": v}``, after every operation
  accepted before it; to every other socket of the document:
  ``{"type": "op", "version": v, "op": [...], "client": id, "seq": n}``;
- server: ``{"type": "error", "field": ..., "message": ..., "seq"?: n}``: the frame or the
  operation named by ``seq`` was refused (not applied); the socket stays open.

Close codes: refused before the upgrade, 4401 (not authenticated), 4403 (not a member),
4404 (no document), 4409 (a rich document: the OT mode is for plain text); 4400 for a
frame that is not JSON, or a ``?version=`` the document has not reached (after an error
frame saying so); 4410 when operations the client needs are no longer kept (reload).

Each socket sends versions in order, with no hole. Operations reach the document's other
sockets through the channel layer (group ``ot.{document_id}``), which is at-most-once: a
socket that sees a hole in the versions reads the missing operations from the database
before sending the one that came, so no operation is lost to a dropped message.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from collaboration import ot_selectors
from collaboration.models import DocumentKind
from collaboration.services.access import CLOSE_MALFORMED, CLOSE_NO_DOCUMENT, socket_member
from collaboration.services.ot import OtRefused, ot_submit

CLOSE_NOT_PLAIN_TEXT = 4409
# Operations this socket must send were no longer kept: the client reloads the text.
CLOSE_RELOAD = 4410

OP_FIELDS = ("version", "op", "seq", "client")


def _op_frame_problem(content: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) of the first field of an op frame of the wrong type; the operation
    itself is checked by the service."""
    for name in OP_FIELDS:
        if name not in content:
            return name, f"required: an op frame has {', '.join(OP_FIELDS)}"
    for name in ("version", "seq"):
        value = content[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return name, f"must be a non-negative integer, got {json.dumps(value)[:40]}"
    if not isinstance(content["client"], str) or not content["client"]:
        return "client", "must be a non-empty string: this client's id (a random one)"
    if not isinstance(content["op"], list):
        return "op", 'must be a list of components: retain n, insert a string, {"d": n} delete'
    return None


class OtDocumentConsumer(AsyncJsonWebsocketConsumer):
    document_id: int | None = None
    recipient_id: int | None = None
    group: str = ""
    writes = False
    # The last version this socket has sent its client (init, an op or an ack): every
    # frame it sends after is the next version.
    sent_version = 0

    async def connect(self) -> None:
        member = await socket_member(self.scope)
        if isinstance(member, int):
            await self.close(code=member)
            return
        document = member.document
        if document.kind != DocumentKind.TEXT:
            await self.close(code=CLOSE_NOT_PLAIN_TEXT, reason="the OT mode edits plain-text documents only")
            return
        self.document_id, self.recipient_id = document.id, member.recipient_id
        self.writes = member.writes
        self.group = f"ot.{document.id}"
        # Joined before the state is read: an operation accepted after the read is relayed
        # here, one accepted before is dropped by its version.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        resume = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("version")
        if resume is None:
            state = await sync_to_async(ot_selectors.ot_state)(document.id)
            self.sent_version = state.version
            await self.send_json({"type": "init", "version": state.version, "text": state.text})
            return
        await self._resume(resume[0])

    async def _resume(self, value: str) -> None:
        assert self.document_id is not None
        current = await sync_to_async(ot_selectors.ot_version)(self.document_id)
        if current is None:
            await self.close(code=CLOSE_NO_DOCUMENT)
            return
        if not value.isdigit() or int(value) > current:
            await self._refuse("version", f"?version= must be a version up to {current}, got {value[:20]!r}")
            return
        self.sent_version = int(value)
        await self.send_json({"type": "resume", "from": self.sent_version, "version": current})
        await self._send_operations_upto(current)

    async def _refuse(self, field: str, message: str) -> None:
        await self.send_json({"type": "error", "field": field, "message": message})
        await self.close(code=CLOSE_MALFORMED, reason=message[:120])

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            await self.close(code=CLOSE_MALFORMED, reason="JSON text frames only")
            return
        if len(text_data) > settings.COLLAB_UPDATE_MAX_BYTES:
            limit = settings.COLLAB_UPDATE_MAX_BYTES
            await self._error(
                "frame", f"a frame of {len(text_data):,} characters is over the {limit:,} limit"
            )
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.close(code=CLOSE_MALFORMED, reason="not JSON: frames are JSON objects")
            return
        if not isinstance(content, dict):
            await self._error("frame", f"expected a JSON object, got {type(content).__name__}")
            return
        if content.get("type") != "op":
            await self._error(
                "type", f"unknown frame type {json.dumps(content.get('type'))[:40]}; expected 'op'"
            )
            return
        seq = content.get("seq")
        if problem := _op_frame_problem(content):
            await self._error(*problem, seq=seq)
            return
        if not self.writes:
            await self._error("op", "viewers cannot edit this document", seq=seq)
            return
        await self._submit(content)

    async def _submit(self, content: dict[str, Any]) -> None:
        assert self.document_id is not None
        try:
            accepted = await sync_to_async(ot_submit)(
                document_id=self.document_id,
                recipient_id=self.recipient_id,
                client_id=content["client"],
                client_seq=content["seq"],
                base_version=content["version"],
                op=content["op"],
            )
        except OtRefused as refused:
            await self._error(refused.field, refused.message, seq=content["seq"])
            return
        # The client transforms its operation against everything accepted before it, so it
        # gets those first (some may not have come through the group yet).
        if not await self._send_operations_upto(accepted.version - 1):
            return
        await self.send_json({"type": "ack", "seq": content["seq"], "version": accepted.version})
        self.sent_version = max(self.sent_version, accepted.version)
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "ot.op",
                "version": accepted.version,
                "op": accepted.op,
                "client": content["client"],
                "seq": content["seq"],
            },
        )

    async def ot_op(self, event: dict[str, Any]) -> None:
        """An operation accepted on any process: sent once, in version order."""
        version = event["version"]
        if version <= self.sent_version:
            return  # this socket's own, or already read from the database
        if not await self._send_operations_upto(version - 1):
            return
        await self.send_json(
            {
                "type": "op",
                "version": version,
                "op": event["op"],
                "client": event["client"],
                "seq": event["seq"],
            }
        )
        self.sent_version = version

    async def _send_operations_upto(self, version: int) -> bool:
        """Send the operations after ``sent_version`` up to ``version`` from the database;
        False (the socket closed) when some are no longer kept."""
        if version <= self.sent_version:
            return True
        assert self.document_id is not None
        missing = await sync_to_async(ot_selectors.ot_operations_since)(
            self.document_id, self.sent_version, upto=version
        )
        if len(missing) != version - self.sent_version:
            await self.close(
                code=CLOSE_RELOAD, reason="operations since this version are no longer kept: reload"
            )
            return False
        for stored in missing:
            await self.send_json(
                {
                    "type": "op",
                    "version": stored.version,
                    "op": stored.op,
                    "client": stored.client_id,
                    "seq": stored.client_seq,
                }
            )
        self.sent_version = version
        return True

    async def _error(self, field: str, message: str, *, seq: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "field": field, "message": message}
        if isinstance(seq, int) and not isinstance(seq, bool):
            frame["seq"] = seq
        await self.send_json(frame)
