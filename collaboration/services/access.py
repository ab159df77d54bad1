"""Who may open a document's socket (``/ws/docs/{key}`` and its OT mode): an authenticated
end user who is a member of the document. Anyone else is told with a close code before
the upgrade completes (the application's own range, as realtime/auth.py's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from collaboration import selectors
from collaboration.models import WRITING_ROLES, Document
from notifications.selectors import recipient_for_user
from realtime.auth import socket_authenticate

CLOSE_MALFORMED = 4400
CLOSE_NOT_A_MEMBER = 4403
CLOSE_NO_DOCUMENT = 4404


@dataclass(frozen=True)
class SocketMember:
    document: Document
    recipient_id: int
    role: str

    @property
    def writes(self) -> bool:
        return self.role in WRITING_ROLES


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


def _document_and_role(key: str, recipient_id: int) -> tuple[Document | None, str | None]:
    document = selectors.document_by_key(key)
    if document is None:
        return None, None
    return document, selectors.member_role(document_id=document.id, recipient_id=recipient_id)


async def socket_member(scope: dict[str, Any]) -> SocketMember | int:
    """The member a socket's scope speaks for, or the close code that refuses it."""
    recipient_id, close_code = await socket_authenticate(
        scope, user_to_recipient=sync_to_async(_recipient_id_for_user)
    )
    if recipient_id is None:
        return int(close_code)
    key = scope["url_route"]["kwargs"]["key"]
    document, role = await sync_to_async(_document_and_role)(key, recipient_id)
    if document is None:
        return CLOSE_NO_DOCUMENT
    if role is None:
        return CLOSE_NOT_A_MEMBER
    return SocketMember(document, recipient_id, role)
