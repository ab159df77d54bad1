"""Collaborative documents: CRDT documents edited over the Yjs sync protocol.

A document's content is never stored as text: it is the Yjs updates its editors sent,
kept as they came (``DocumentUpdate``, append-only) until compaction merges them into
the document's base (``DocumentSnapshot``): loading a document reads one snapshot plus a
short tail. Named and automatic versions (``DocumentVersion``) are whole states of their
own, kept for history and restore. Members are recipients of the notification platform
with a role (collaboration/services/documents.py).
"""

from __future__ import annotations

from django.db import models
from django.utils.timezone import now

from notifications.models import KEY_VALIDATOR, Recipient


class DocumentKind(models.TextChoices):
    RICH = "rich", "formatted text"
    TEXT = "text", "plain text"


class Role(models.TextChoices):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


# Roles whose updates are applied; a viewer's are refused (it still receives everything).
WRITING_ROLES = frozenset({Role.OWNER, Role.EDITOR})


class Document(models.Model):
    key = models.CharField(max_length=200, unique=True, validators=[KEY_VALIDATOR])
    title = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=10, choices=DocumentKind.choices, default=DocumentKind.RICH)
    # Bytes held for the document: its snapshot and the updates not yet merged into it.
    # Kept with each stored update in one statement, so the size limit is checked without
    # reading the updates (collaboration/services/updates.py).
    stored_bytes = models.BigIntegerField(default=0)
    # Updates stored since the last compaction.
    tail_updates = models.IntegerField(default=0)
    # The server-ordered OT mode's text and version (collaboration/services/ot.py): kept
    # apart from the CRDT content, the OT mode being there to compare the two approaches.
    ot_text = models.TextField(blank=True, default="")
    ot_version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return self.key


class DocumentMember(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="members")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="document_memberships")
    role = models.CharField(max_length=10, choices=Role.choices)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["document", "recipient"], name="collab_member_once"),
        ]
        indexes = [models.Index(fields=["recipient"], name="collab_member_recipient")]

    def __str__(self) -> str:
        return f"{self.recipient_id} {self.role} of {self.document_id}"


class DocumentUpdate(models.Model):
    """One Yjs update as an editor sent it, stored before any peer hears of it. ``id``
    orders a document's updates; compaction removes those it merged."""

    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="updates", db_index=False)
    data = models.BinaryField()
    # Who sent it (None: the server, e.g. a restore).
    recipient = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    created_at = models.DateTimeField(default=now)

    class Meta:
        indexes = [models.Index(fields=["document", "id"], name="collab_update_doc_id")]

    def __str__(self) -> str:
        return f"update {self.id} of {self.document_id}"


class DocumentSnapshot(models.Model):
    """The document's base: every update up to ``upto_update_id`` merged into one."""

    document = models.OneToOneField(Document, on_delete=models.CASCADE, related_name="snapshot")
    data = models.BinaryField()
    upto_update_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return f"snapshot of {self.document_id} up to update {self.upto_update_id}"


class VersionKind(models.TextChoices):
    AUTO = "auto", "automatic"
    NAMED = "named", "named"


class DocumentVersion(models.Model):
    """A whole state of the document kept for its history: named by someone, or taken
    automatically. Restoring one writes the difference as a new edit."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=VersionKind.choices)
    name = models.CharField(max_length=200, blank=True)
    data = models.BinaryField()
    created_by = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="collab_version_number_once"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id} v{self.number}"


class DocumentComment(models.Model):
    """A comment on a span of the document, or (``parent`` set) a reply in its thread.

    ``anchor`` holds two Yjs relative positions (``{"start": ..., "end": ...}``, as
    ``Y.relativePositionToJSON`` writes them): they name the characters, not offsets, so the
    comment stays on its text while others edit around it. ``quote`` is the text it was
    made on, shown when the span has since been deleted."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="comments")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    author = models.ForeignKey(Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField()
    anchor = models.JSONField(null=True, blank=True)
    quote = models.CharField(max_length=500, blank=True)
    # External ids of the members the body mentions (each told once, when it is posted).
    mentions = models.JSONField(default=list, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        indexes = [models.Index(fields=["document", "id"], name="collab_comment_doc_id")]

    def __str__(self) -> str:
        return f"comment {self.id} on {self.document_id}"


class DocumentOperation(models.Model):
    """One operation accepted by the server-ordered OT mode (``/ws/docs/{key}/ot``), as
    transformed by the server: applying a document's operations in ``version`` order to
    the empty text gives its OT text (``Document.ot_text`` at ``Document.ot_version``).
    ``client_id`` and ``client_seq`` make a resent operation land once."""

    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(
        Document, on_delete=models.CASCADE, related_name="operations", db_index=False
    )
    version = models.PositiveIntegerField()
    op = models.JSONField()
    recipient = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    client_id = models.CharField(max_length=64)
    client_seq = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["document", "version"], name="collab_op_version_once"),
            models.UniqueConstraint(
                fields=["document", "client_id", "client_seq"], name="collab_op_client_seq_once"
            ),
        ]

    def __str__(self) -> str:
        return f"op v{self.version} of {self.document_id}"
