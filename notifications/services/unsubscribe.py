"""One-click unsubscribe for email (RFC 8058).

Every non-transactional mail carries ``List-Unsubscribe`` with an HTTPS link holding a
signed token, and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. Mail providers
POST to the link without cookies: that POST unsubscribes. A GET (a person, or a link
scanner following every URL) only shows a confirmation page, so scanners unsubscribe
nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.db import transaction

from notifications.models import Category, Channel, Preference, Recipient

_SALT = "notifications.unsubscribe"
# Categories whose mail is not an answer to something the user did: these carry the headers.
UNSUBSCRIBABLE = {Category.SOCIAL, Category.MARKETING}


@dataclass(frozen=True)
class UnsubscribeScope:
    recipient_id: int
    category: str
    notification_type: str


@lru_cache(maxsize=4)
def _signer(secret_key: str, fallbacks: tuple[str, ...]) -> signing.TimestampSigner:
    return signing.TimestampSigner(key=secret_key, fallback_keys=list(fallbacks), salt=_SALT)


def unsubscribe_token(*, recipient_id: int, category: str, notification_type: str = "") -> str:
    """The token ``signing.dumps`` makes, from one signer per secret key: every marketing
    email of a campaign signs one, and making the signer each time (settings read, key
    resolved) cost half of it. Not compressed: a payload this short never shrinks, and
    ``signing.loads`` reads both forms."""
    signer = _signer(settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS))
    return signer.sign_object([recipient_id, category, notification_type])


def unsubscribe_parse(token: str) -> UnsubscribeScope | None:
    """The scope a token stands for, or None when it was not made by us (tampered, truncated)."""
    try:
        recipient_id, category, notification_type = signing.loads(token, salt=_SALT)
        return UnsubscribeScope(int(recipient_id), str(category), str(notification_type))
    except (signing.BadSignature, ValueError, TypeError):
        return None


def unsubscribe_url(*, recipient_id: int, category: str, notification_type: str = "") -> str:
    token = unsubscribe_token(
        recipient_id=recipient_id, category=category, notification_type=notification_type
    )
    return f"{settings.PUBLIC_URL}/unsubscribe/{token}/"


def unsubscribe_headers(*, recipient_id: int, category: str, notification_type: str) -> dict[str, str]:
    """The RFC 8058 headers of a mail of this category; none for transactional or critical mail."""
    if category not in UNSUBSCRIBABLE:
        return {}
    url = unsubscribe_url(recipient_id=recipient_id, category=category, notification_type=notification_type)
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def unsubscribe_apply(*, scope: UnsubscribeScope) -> bool:
    """Turn off email for the scope's category. Returns False when the recipient is gone.
    Applying twice is harmless."""
    with transaction.atomic():
        if not Recipient.objects.filter(id=scope.recipient_id).exists():
            return False
        Preference.objects.update_or_create(
            recipient_id=scope.recipient_id,
            notification_type=None,
            category=scope.category,
            channel=Channel.EMAIL,
            defaults={"enabled": False},
        )
    return True
