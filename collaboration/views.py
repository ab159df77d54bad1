"""The collaborative documents' pages: ``/docs/``, the user's documents and a form that
creates one, and the editor, ``/docs/{key}/``: the server says who the user is and what
they may do; the editing itself happens over the document socket and the REST API, from
collaboration/static/collaboration/document.js."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods

from collaboration import selectors
from collaboration.models import WRITING_ROLES, DocumentKind, Role
from collaboration.services.documents import document_create
from notifications.selectors import recipient_for_user
from notifications.services.validation import ValidationFailed

DOCUMENTS_SHOWN = 200


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


@require_http_methods(["GET", "POST"])
@login_required
def documents_page(request: HttpRequest) -> HttpResponse:
    """``/docs/``: the logged-in user's documents, most recently edited first, and a form
    that creates one (its creator owns it). A refused form is shown again with each error
    beside its field; nothing is created then."""
    recipient = recipient_for_user(user=request.user)
    if recipient is None:
        return render(request, "notifications/no_inbox.html", status=404)
    errors: dict[str, list[str]] = {}
    form = {"key": "", "title": "", "kind": DocumentKind.RICH}
    if request.method == "POST":
        form = {name: request.POST.get(name, "") for name in ("key", "title", "kind")}
        try:
            document = document_create(
                key=form["key"],
                title=form["title"],
                kind=form["kind"],
                members=[{"recipient": recipient.external_id, "role": Role.OWNER}],
            )
        except ValidationFailed as refused:
            errors = {name: [str(m) for m in messages] for name, messages in refused.errors.items()}
        else:
            return redirect("document-page", key=document.key)
    documents = selectors.documents_of(recipient_id=recipient.id, limit=DOCUMENTS_SHOWN)
    members = selectors.members_of([d.id for d in documents])
    rows = [
        {
            "document": d,
            "role": next((m["role"] for m in members[d.id] if m["recipient"] == recipient.external_id), ""),
            "members": len(members[d.id]),
        }
        for d in documents
    ]
    context = {"rows": rows, "form": form, "errors": errors, "kinds": DocumentKind.choices}
    return render(request, "collaboration/documents.html", context, status=400 if errors else 200)
