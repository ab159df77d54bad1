"""One-click unsubscribe (RFC 8058): the headers on social and marketing mail, a GET that
changes nothing, a cookie-less POST that opts out, and planning that honours it."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import signing
from django.test import Client
from django.utils import timezone

from notifications.models import Delivery, Preference, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.ingest import event_ingest
from notifications.services.planning import RecipientFacts, plan_page
from notifications.services.unsubscribe import unsubscribe_headers, unsubscribe_parse, unsubscribe_url
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

PUBLIC_URL = "https://notify.example.com"
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.PUBLIC_URL = PUBLIC_URL


@pytest.fixture
def provider_client() -> Client:
    """A mail provider's server: no cookies, no CSRF token, CSRF checks enforced."""
    return Client(enforce_csrf_checks=True)


def _path(recipient: Recipient, category: str = "marketing", notification_type: str = "promo.weekly") -> str:
    url = unsubscribe_url(recipient_id=recipient.id, category=category, notification_type=notification_type)
    assert url.startswith(f"{PUBLIC_URL}/unsubscribe/")
    return url.removeprefix(PUBLIC_URL)


def _one_click(client: Client, path: str) -> Any:
    return client.post(path, ONE_CLICK, content_type="application/x-www-form-urlencoded")


def test_it_signs_links_with_the_current_secret_key_and_honours_old_ones_through_the_fallbacks(settings):
    # given a link signed before the secret key was rotated
    settings.SECRET_KEY = "the-old-key-" + "x" * 40
    old = unsubscribe_url(recipient_id=7, category="marketing", notification_type="promo.weekly")
    old_token = old.removeprefix(f"{PUBLIC_URL}/unsubscribe/").removesuffix("/")

    # when the key is rotated without the old one among the fallbacks, the old link is refused
    settings.SECRET_KEY = "the-new-key-" + "y" * 40
    assert unsubscribe_parse(old_token) is None
    # and a link signed now carries the new key's signature
    new = unsubscribe_url(recipient_id=7, category="marketing", notification_type="promo.weekly")
    new_token = new.removeprefix(f"{PUBLIC_URL}/unsubscribe/").removesuffix("/")
    assert new_token != old_token and unsubscribe_parse(new_token) is not None
    assert signing.loads(new_token, key=settings.SECRET_KEY, salt="notifications.unsubscribe") == [
        7,
        "marketing",
        "promo.weekly",
    ]

    # then with the old key among the fallbacks, the old link works again
    settings.SECRET_KEY_FALLBACKS = ["the-old-key-" + "x" * 40]
    scope = unsubscribe_parse(old_token)
    assert scope is not None and scope.recipient_id == 7


@pytest.mark.parametrize("category", ["social", "marketing"])
def test_it_gives_social_and_marketing_mail_one_click_headers(category):
    # when the headers of a mail of this category are built
    headers = unsubscribe_headers(recipient_id=42, category=category, notification_type="friend.joined")

    # then List-Unsubscribe holds one HTTPS link whose token stands for the recipient and
    # category, and List-Unsubscribe-Post asks for one click
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK
    link = headers["List-Unsubscribe"]
    assert link.startswith(f"<{PUBLIC_URL}/unsubscribe/") and link.endswith("/>")
    token = link.removeprefix(f"<{PUBLIC_URL}/unsubscribe/").removesuffix("/>")
    scope = unsubscribe_parse(token)
    assert scope is not None
    assert (scope.recipient_id, scope.category, scope.notification_type) == (42, category, "friend.joined")


@pytest.mark.parametrize("category", ["critical", "transactional"])
def test_it_gives_critical_and_transactional_mail_no_unsubscribe_headers(category):
    assert unsubscribe_headers(recipient_id=42, category=category, notification_type="password.reset") == {}


def test_it_shows_a_confirmation_form_on_get_and_changes_nothing(client):
    # given a recipient's unsubscribe link
    recipient = RecipientFactory()

    # when it is opened (by the person, or by a link scanner)
    response = client.get(_path(recipient))

    # then a confirmation form is shown and nothing is stored
    assert response.status_code == 200
    page = response.content.decode()
    assert '<form method="post"' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert "marketing" in page
    assert not Preference.objects.exists()


def test_it_unsubscribes_on_a_one_click_post_without_cookies_or_csrf_token(provider_client):
    # given a recipient's unsubscribe link
    recipient = RecipientFactory()

    # when the mail provider POSTs List-Unsubscribe=One-Click with no cookie and no CSRF token
    response = _one_click(provider_client, _path(recipient))

    # then it succeeds without redirect and email of that category is turned off
    assert response.status_code == 200
    assert 'id="unsubscribed"' in response.content.decode()
    preference = Preference.objects.get()
    assert (
        preference.recipient_id,
        preference.notification_type_id,
        preference.category,
        preference.channel,
        preference.enabled,
    ) == (recipient.id, None, "marketing", "email", False)


def test_it_turns_a_stored_opt_in_off_and_a_repeated_post_is_harmless(provider_client):
    # given a recipient who had turned marketing email on explicitly
    recipient = RecipientFactory()
    Preference.objects.create(recipient=recipient, category="marketing", channel="email", enabled=True)
    path = _path(recipient)

    # when the one-click POST comes twice (providers retry)
    first, second = _one_click(provider_client, path), _one_click(provider_client, path)

    # then both succeed and there is one preference, off
    assert (first.status_code, second.status_code) == (200, 200)
    assert list(Preference.objects.values_list("category", "channel", "enabled")) == [
        ("marketing", "email", False)
    ]


def test_it_unsubscribes_only_from_the_links_category(provider_client):
    recipient = RecipientFactory()

    _one_click(provider_client, _path(recipient, category="social"))

    assert list(Preference.objects.values_list("category", "enabled")) == [("social", False)]


def _token(recipient: Recipient) -> str:
    return _path(recipient).removeprefix("/unsubscribe/").removesuffix("/")


def test_it_answers_404_to_a_tampered_token(client, provider_client):
    # given Ana's link, and tokens forged from it: Bob's payload under Ana's signature,
    # Ana's payload with a changed signature, and no token at all
    ana, bob = RecipientFactory(), RecipientFactory()
    ana_payload, ana_signature = _token(ana).rsplit(":", 1)
    bob_payload, _ = _token(bob).rsplit(":", 1)
    forged = [
        f"{bob_payload}:{ana_signature}",
        f"{ana_payload}:{ana_signature[::-1]}",
        "hello",
    ]

    for token in forged:
        # when it is opened or posted
        shown = client.get(f"/unsubscribe/{token}/")
        posted = _one_click(provider_client, f"/unsubscribe/{token}/")

        # then both are 404 with the invalid-link page, and nothing is stored
        assert (shown.status_code, posted.status_code) == (404, 404), token
        assert "not valid" in posted.content.decode()
    assert not Preference.objects.exists()


def test_it_answers_404_when_the_recipient_is_gone(provider_client):
    recipient = RecipientFactory()
    path = _path(recipient)
    recipient.delete()

    assert _one_click(provider_client, path).status_code == 404
    assert not Preference.objects.exists()


def test_it_refuses_other_methods(client):
    recipient = RecipientFactory()

    response = client.put(_path(recipient))

    assert response.status_code == 405 and not Preference.objects.exists()


def test_it_suppresses_the_categorys_email_after_unsubscribing(
    provider_client, django_capture_on_commit_callbacks
):
    # given a marketing type sent by email only, and a recipient who unsubscribed through
    # the link in an earlier marketing mail
    marketing = NotificationTypeFactory(category="marketing", channels=["email"])
    recipient = RecipientFactory(email="ana@example.com")
    assert _one_click(provider_client, _path(recipient, notification_type=marketing.key)).status_code == 200

    # when the next marketing event for them goes through the pipeline
    key, _ = api_key_create(name="unsubscribe")
    with django_capture_on_commit_callbacks(execute=True):
        event = event_ingest(api_key=key, type_key=marketing.key, recipients=[recipient.external_id]).event

    # then their email is suppressed by the preference, before any provider is involved
    delivery = Delivery.objects.get(event=event)
    assert (delivery.channel, delivery.status, delivery.reason) == (
        "email",
        "suppressed",
        "preference: opted out",
    )
    assert delivery.attempts == 0


def test_it_plans_other_categories_and_other_recipients_as_before(provider_client):
    # given one recipient unsubscribed from marketing and one who was not
    marketing = NotificationTypeFactory(category="marketing", channels=["email"])
    transactional = NotificationTypeFactory(category="transactional", channels=["email"])
    gone, staying = RecipientFactory(), RecipientFactory()
    _one_click(provider_client, _path(gone))
    facts = [RecipientFacts(r.id, "UTC", None, None) for r in (gone, staying)]

    # when each type is planned for both
    now = timezone.now()
    planned_marketing = plan_page(notification_type=marketing, recipients=facts, now=now)
    planned_transactional = plan_page(notification_type=transactional, recipients=facts, now=now)

    # then only the unsubscribed recipient's marketing email is suppressed
    assert {(p.recipient_id, p.status, p.reason) for p in planned_marketing} == {
        (gone.id, "suppressed", "preference: opted out"),
        (staying.id, "pending", ""),
    }
    assert {(p.recipient_id, p.status) for p in planned_transactional} == {
        (gone.id, "pending"),
        (staying.id, "pending"),
    }
