"""The collaborative editor page, ``/docs/{key}/``: the server says who the user is and what
they may do; the editing itself happens over the document socket and the REST API, from
collaboration/static/collaboration/document.js."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from collaboration import selectors
from collaboration.models import WRITING_ROLES
from notifications.selectors import recipient_for_user


@require_GET
@login_required
@ensure_csrf_cookie
def document_page(request: HttpRequest, key: str) -> HttpResponse:
    """The editor of the document ``key`` for one of its members. Anyone else (and a key
    that names no document) gets the same 404 page, so the page does not tell outsiders
    which documents exist."""
    recipient = recipient_for_user(user=request.user)
    document = selectors.document_by_key(key)
    role = (
        selectors.member_role(document_id=document.id, recipient_id=recipient.id)
        if document is not None and recipient is not None
        else None
    )
    if document is None or recipient is None or role is None:
        return render(request, "collaboration/no_document.html", {"key": key}, status=404)
    context = {
        "key": document.key,
        "kind": document.kind,
        "title": document.title or document.key,
        "role": role,
        "can_write": role in WRITING_ROLES,
        "me_id": recipient.external_id,
        "me_name": recipient.name or recipient.external_id,
    }
    return render(request, "collaboration/document.html", context)
