"""The preference center pages: /preferences/ for a logged-in user and the same form bound
to an email's unsubscribe link, the landing after a one-click unsubscribe and its Undo."""

from __future__ import annotations

import re
import uuid
from datetime import time
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from notifications.models import DigestSetting, NotificationType, Preference, Recipient
from notifications.services.planning import RecipientFacts, plan_page
from notifications.services.unsubscribe import unsubscribe_token
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture
def catalog() -> dict[str, NotificationType]:
    """A type per category: order (transactional: in-app and email), liked (social: in-app,
    email, push), newsletter (marketing: email), login (critical: in-app, email, push)."""
    suffix = uuid.uuid4().hex[:6]
    return {
        "order": NotificationTypeFactory(
            key=f"order.shipped.{suffix}", name="Order shipped", channels=["inapp", "email"]
        ),
        "liked": NotificationTypeFactory(
            key=f"post.liked.{suffix}",
            name="Post liked",
            category="social",
            channels=["inapp", "email", "push"],
        ),
        "newsletter": NotificationTypeFactory(
            key=f"newsletter.{suffix}", name="Weekly newsletter", category="marketing", channels=["email"]
        ),
        "login": NotificationTypeFactory(
            key=f"login.suspicious.{suffix}",
            name="Suspicious login",
            category="critical",
            channels=["inapp", "email", "push"],
        ),
    }


def logged_in(recipient: Recipient | None = None) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    if recipient is not None:
        Recipient.objects.filter(id=recipient.id).update(user=user)
    client = Client()
    client.force_login(user)
    return client, user


def checkbox(html: str, name: str) -> str:
    """The checkbox input (not its hidden "off") of a form field, as rendered."""
    found = re.search(rf'<input type="checkbox"[^>]*name="{re.escape(name)}"[^>]*>', html)
    assert found, f"no checkbox {name}"
    return found.group(0)


def form_fields(html: str) -> dict[str, str]:
    """What a browser would submit for the rendered form untouched: the last value of each
    name (checkboxes only when checked), the selected option of each select."""
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if not name or "disabled" in tag:
            continue
        if 'type="checkbox"' in tag and " checked" not in tag:
            continue
        fields[name.group(1)] = value.group(1) if value else ""
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.search(r"<option(?: value=\"([^\"]*)\")? selected>([^<]*)</option>", body)
        assert chosen, name
        fields[name] = chosen.group(1) if chosen.group(1) is not None else chosen.group(2)
    return fields


def stored(recipient: Recipient) -> set[tuple[str, str, bool]]:
    """The recipient's overrides as (scope, channel, enabled); scope is the type key, the
    category, or "*"."""
    return {
        (p.notification_type.key if p.notification_type else p.category or "*", p.channel, p.enabled)
        for p in Preference.objects.filter(recipient=recipient).select_related("notification_type")
    }


# --- GET ---------------------------------------------------------------------------------------


def test_it_sends_an_anonymous_visitor_to_log_in() -> None:
    response = Client().get("/preferences/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/preferences/")


def test_it_shows_a_friendly_404_to_an_account_without_a_recipient() -> None:
    client, _ = logged_in()

    response = client.get("/preferences/")

    assert response.status_code == 404
    assert b"No preferences for this account" in response.content


def test_it_shows_every_type_per_category_with_its_defaults_and_the_critical_ones_always_on(catalog):
    # given a recipient with no choices of their own
    client, _ = logged_in(RecipientFactory())

    # when they open the preference center
    response = client.get("/preferences/")

    # then each category is a fieldset with a legend and a table of its types, each
    # channel of a type a checked box saying the default is on
    assert response.status_code == 200
    html = response.content.decode()
    for legend in ("All notifications", "Transactional", "Social", "Marketing", "Critical", "Quiet hours"):
        assert f"<legend>{legend}</legend>" in html
    for key, channels in (
        (catalog["order"].key, ["inapp", "email"]),
        (catalog["liked"].key, ["inapp", "email", "push"]),
        (catalog["newsletter"].key, ["email"]),
    ):
        for channel in channels:
            box = checkbox(html, f"type:{key}:{channel}")
            assert " checked" in box
            note = re.search(r'aria-describedby="([^"]+)"', box)
            assert note and f'id="{note.group(1)}">default: on</span>' in html
    assert f'name="type:{catalog["newsletter"].key}:push"' not in html  # not one of its channels
    # and the critical type's boxes are checked, disabled, nameless and "always on"
    login_row = html[html.index(f'data-type="{catalog["login"].key}"') :].split("</tr>")[0]
    assert login_row.count("checked disabled") == 3 and login_row.count("always on") == 3
    assert "name=" not in login_row
    # and the category and all-notification switches, digests, quiet hours and time zone
    assert " checked" in checkbox(html, "category:social:push")
    assert " checked" in checkbox(html, "channel:email")
    assert 'name="category:critical:' not in html and 'name="digest:critical"' not in html
    assert '<select id="digest-social" name="digest:social"' in html
    assert "<option selected>UTC</option>" in html
    assert 'name="quiet_hours_start" value=""' in html
    # and every visible control has a label
    for control_id in re.findall(r'<(?:input|select)[^>]* id="([^"]+)"', html):
        assert f'for="{control_id}"' in html, control_id
    assert "notifications/preferences.js" in html and "csrftoken" in response.cookies


def test_it_shows_the_effective_value_of_each_box_by_precedence(catalog):
    # given email off for all notifications, social email back on, and the newsletter's
    # email... on for that type; in-app off for the order type; quiet hours and a digest
    recipient = RecipientFactory(
        timezone="Europe/Lisbon", quiet_hours_start=time(22, 0), quiet_hours_end=time(7, 30)
    )
    Preference.objects.create(recipient=recipient, channel="email", enabled=False)
    Preference.objects.create(recipient=recipient, category="social", channel="email", enabled=True)
    Preference.objects.create(
        recipient=recipient, notification_type=catalog["newsletter"], channel="email", enabled=True
    )
    Preference.objects.create(
        recipient=recipient, notification_type=catalog["order"], channel="inapp", enabled=False
    )
    DigestSetting.objects.create(recipient=recipient, category="social", frequency="weekly")
    client, _ = logged_in(recipient)

    html = client.get("/preferences/").content.decode()

    # then each box shows what planning would do
    def on(name: str) -> bool:
        return " checked" in checkbox(html, name)

    assert not on("channel:email") and on("channel:inapp")
    assert not on("category:transactional:email") and on("category:social:email")
    assert not on(f"type:{catalog['order'].key}:email")  # from all notifications
    assert not on(f"type:{catalog['order'].key}:inapp")  # its own override
    assert on(f"type:{catalog['liked'].key}:email")  # from its category
    assert on(f"type:{catalog['newsletter'].key}:email")  # its own override
    assert '<option value="weekly" selected>' in html
    assert 'value="22:00"' in html and 'value="07:30"' in html
    assert "<option selected>Europe/Lisbon</option>" in html


# --- POST --------------------------------------------------------------------------------------


def test_it_saves_an_unchanged_form_as_nothing(catalog):
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())

    response = client.post("/preferences/", fields)

    assert response.status_code == 302 and response["Location"] == "/preferences/"
    assert stored(recipient) == set() and not DigestSetting.objects.exists()
    assert "Saved" in client.get("/preferences/").content.decode()


def test_it_saves_a_type_switched_off_and_the_next_event_is_suppressed_on_that_channel(catalog):
    # given a recipient on the page as rendered
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())

    # when they untick the social type's email (the box is not sent, its hidden "off" is),
    # set quiet hours, a time zone and a digest, and save
    fields[f"type:{catalog['liked'].key}:email"] = "off"
    fields.update(
        {
            "quiet_hours_start": "22:00",
            "quiet_hours_end": "07:00",
            "timezone": "America/Sao_Paulo",
            "digest:marketing": "daily",
        }
    )
    response = client.post("/preferences/", fields)

    # then it redirects back with "Saved", and stores just that override and the settings
    assert response.status_code == 302
    assert stored(recipient) == {(catalog["liked"].key, "email", False)}
    recipient.refresh_from_db()
    assert (recipient.quiet_hours_start, recipient.quiet_hours_end, recipient.timezone) == (
        time(22, 0),
        time(7, 0),
        "America/Sao_Paulo",
    )
    assert list(DigestSetting.objects.values_list("recipient_id", "category", "frequency")) == [
        (recipient.id, "marketing", "daily")
    ]
    page = client.get("/preferences/").content.decode()
    assert "Saved" in page and " checked" not in checkbox(page, f"type:{catalog['liked'].key}:email")

    # and the next event planned sees it at once: email suppressed, the others not
    planned = plan_page(
        notification_type=catalog["liked"],
        recipients=[RecipientFacts(recipient.id, "UTC", None, None)],
        now=timezone.now(),
    )
    assert {(p.channel, p.status) for p in planned} == {
        ("inapp", "pending"),
        ("email", "suppressed"),
        ("push", "pending"),
    }


def test_it_turns_a_channel_off_for_all_notifications_without_script(catalog):
    # given a recipient whose page has every box ticked
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())

    # when only the all-notifications email box is unticked (no script unticks the others)
    fields["channel:email"] = "off"
    client.post("/preferences/", fields)

    # then one override is stored and every non-critical type's email is off
    assert stored(recipient) == {("*", "email", False)}
    html = client.get("/preferences/").content.decode()
    for key in ("order", "liked", "newsletter"):
        assert " checked" not in checkbox(html, f"type:{catalog[key].key}:email")
    assert login_email_always_on(html, catalog)


def login_email_always_on(html: str, catalog: dict[str, NotificationType]) -> bool:
    row = html[html.index(f'data-type="{catalog["login"].key}"') :].split("</tr>")[0]
    return row.count("checked disabled") == 3


def test_it_stores_a_changed_box_only_where_it_differs_from_the_level_above(catalog):
    # given marketing email off for the category, and the newsletter's email on by itself
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())
    fields["category:marketing:email"] = "off"
    fields[f"type:{catalog['newsletter'].key}:email"] = "off"  # the script unticks the boxes below
    client.post("/preferences/", fields)
    assert stored(recipient) == {("marketing", "email", False)}

    # when the category is switched back on, and its boxes with it
    fields = form_fields(client.get("/preferences/").content.decode())
    fields["category:marketing:email"] = "on"
    fields[f"type:{catalog['newsletter'].key}:email"] = "on"
    client.post("/preferences/", fields)

    # then nothing is left stored
    assert stored(recipient) == set()


def test_it_keeps_a_types_own_choice_when_only_its_category_changes(catalog):
    # given the social type's push explicitly on
    recipient = RecipientFactory()
    Preference.objects.create(
        recipient=recipient, notification_type=catalog["liked"], channel="push", enabled=True
    )
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())

    # when social push is switched off for the category, the type's box untouched
    fields["category:social:push"] = "off"
    client.post("/preferences/", fields)

    # then the type keeps its own choice
    assert stored(recipient) == {("social", "push", False), (catalog["liked"].key, "push", True)}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"quiet_hours_start": "25:00"}, "quiet_hours_start", "must be a time of day as HH:MM"),
        ({"quiet_hours_end": ""}, "quiet_hours_end", "give both the start and the end"),
        ({"quiet_hours_end": "22:00"}, "quiet_hours_end", "must differ from the start"),
        ({"timezone": "Mars/Olympus"}, "timezone", "'Mars/Olympus' is not an IANA time zone"),
        ({"digest:social": "hourly"}, "digest:social", "must be one of off, daily, weekly"),
        ({"digest:critical": "daily"}, "digest:critical", "never in a digest"),
        ({"channel:pigeon": "on"}, "channel:pigeon", "unknown channel 'pigeon'"),
        ({"category:social:email": "yes"}, "category:social:email", "must be 'on' or 'off'"),
        ({"type:nope.nothing:email": "off"}, "type:nope.nothing:email", "unknown notification type"),
    ],
)
def test_it_refuses_bad_input_naming_the_field_and_stores_nothing(catalog, change, field, message):
    # given a recipient with one stored choice, filling in a form with some good changes
    recipient = RecipientFactory(quiet_hours_start=time(23, 0), quiet_hours_end=time(6, 0))
    Preference.objects.create(recipient=recipient, category="marketing", channel="email", enabled=False)
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())
    fields[f"type:{catalog['order'].key}:email"] = "off"
    fields.update({"quiet_hours_start": "22:00", "timezone": "Asia/Tokyo", **change})

    # when it is posted with one bad value
    response = client.post("/preferences/", fields)

    # then the page comes back (400) naming the field, filled in as sent, and nothing changed
    assert response.status_code == 400
    html = response.content.decode()
    assert "Nothing was saved" in html and message in unescape(html)
    assert " checked" not in checkbox(html, f"type:{catalog['order'].key}:email")
    assert stored(recipient) == {("marketing", "email", False)}
    recipient.refresh_from_db()
    assert (recipient.quiet_hours_start, recipient.timezone) == (time(23, 0), "UTC")
    assert not DigestSetting.objects.exists()

    # and the page's script gets the same as JSON, keyed by the field
    answer = client.post("/preferences/", fields, HTTP_ACCEPT="application/json")
    assert answer.status_code == 400
    assert message in answer.json()["errors"][field][0]
    assert message in answer.json()["messages"][field]


def test_it_refuses_to_turn_a_critical_type_off(catalog):
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())

    response = client.post("/preferences/", {**fields, f"type:{catalog['login'].key}:email": "off"})

    assert response.status_code == 400 and "is critical: it is always on" in unescape(
        response.content.decode()
    )
    assert stored(recipient) == set()


def test_it_answers_the_script_with_the_stored_values(catalog):
    recipient = RecipientFactory()
    client, _ = logged_in(recipient)
    fields = form_fields(client.get("/preferences/").content.decode())
    fields["category:social:email"] = "off"
    fields[f"type:{catalog['liked'].key}:email"] = "off"

    response = client.post("/preferences/", fields, HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    body = response.json()
    assert body["saved"] is True and body["message"].startswith("Saved")
    values = body["values"]
    assert values["category:social:email"] == "off" and values[f"type:{catalog['liked'].key}:email"] == "off"
    assert values[f"type:{catalog['order'].key}:email"] == "on" and values["timezone"] == "UTC"
    assert f"type:{catalog['login'].key}:email" not in values
    assert stored(recipient) == {("social", "email", False)}


def test_it_requires_the_csrf_token() -> None:
    recipient = RecipientFactory()
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    Recipient.objects.filter(id=recipient.id).update(user=user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post("/preferences/", {"channel:email": "off"})

    assert response.status_code == 403 and stored(recipient) == set()


def test_it_changes_only_the_logged_in_users_own_preferences(catalog):
    # given Ana logged in and Bob, another recipient with a choice of his own
    ana, bob = RecipientFactory(), RecipientFactory()
    Preference.objects.create(recipient=bob, category="social", channel="inapp", enabled=False)
    client, _ = logged_in(ana)

    # when Ana's page is read and posted, with Bob's external id slipped in wherever it fits
    html = client.get("/preferences/").content.decode()
    assert bob.external_id not in html
    fields = form_fields(html)
    fields["channel:email"] = "off"
    response = client.post(
        f"/preferences/?recipient={bob.external_id}", {**fields, "recipient": bob.external_id}
    )

    # then only Ana's preferences changed
    assert response.status_code == 302
    assert stored(ana) == {("*", "email", False)}
    assert stored(bob) == {("social", "inapp", False)}


# --- The unsubscribe landing -------------------------------------------------------------------


def _token(recipient: Recipient, notification_type: NotificationType) -> str:
    return unsubscribe_token(
        recipient_id=recipient.id,
        category=notification_type.category,
        notification_type=notification_type.key,
    )


def test_it_shows_what_a_one_click_unsubscribe_turned_off_with_undo_and_a_link_to_the_preferences(catalog):
    # given a recipient's link from a newsletter email
    recipient = RecipientFactory()
    token = _token(recipient, catalog["newsletter"])
    browser = Client(enforce_csrf_checks=True)

    # when they confirm the unsubscribe on the page
    confirm = browser.get(f"/unsubscribe/{token}/")
    assert f'href="/unsubscribe/{token}/preferences/"' in confirm.content.decode()
    done = browser.post(f"/unsubscribe/{token}/", ONE_CLICK, content_type="application/x-www-form-urlencoded")

    # then the page says which emails stop, and offers Undo and every preference
    assert done.status_code == 200
    html = done.content.decode()
    assert 'id="unsubscribed"' in html
    assert "You will no longer get <strong>marketing</strong> emails, such as “Weekly newsletter”" in html
    assert f'action="/unsubscribe/{token}/undo/"' in html
    assert (
        f'href="/unsubscribe/{token}/preferences/" id="manage-preferences">Manage all email preferences'
        in html
    )
    assert stored(recipient) == {("marketing", "email", False)}

    # and Undo (a CSRF-checked form) turns marketing email back on
    csrf = browser.cookies["csrftoken"].value
    undone = browser.post(f"/unsubscribe/{token}/undo/", {"csrfmiddlewaretoken": csrf})
    assert undone.status_code == 200 and 'id="resubscribed"' in undone.content.decode()
    assert stored(recipient) == set()


def test_it_keeps_marketing_email_on_after_undo_when_all_email_is_off(catalog):
    recipient = RecipientFactory()
    Preference.objects.create(recipient=recipient, channel="email", enabled=False)
    token = _token(recipient, catalog["newsletter"])
    Client().post(f"/unsubscribe/{token}/", ONE_CLICK, content_type="application/x-www-form-urlencoded")

    Client().post(f"/unsubscribe/{token}/undo/")

    assert stored(recipient) == {("*", "email", False), ("marketing", "email", True)}


def test_it_refuses_an_undo_by_get_or_with_a_bad_token(catalog):
    recipient = RecipientFactory()
    token = _token(recipient, catalog["newsletter"])
    Preference.objects.create(recipient=recipient, category="marketing", channel="email", enabled=False)

    assert Client().get(f"/unsubscribe/{token}/undo/").status_code == 405
    assert Client().post(f"/unsubscribe/{token[:-2]}xx/undo/").status_code == 404
    assert stored(recipient) == {("marketing", "email", False)}


def test_it_binds_the_preference_form_to_the_links_recipient_without_login(catalog):
    # given Ana's link and Bob, another recipient
    ana, bob = RecipientFactory(name="Ana"), RecipientFactory()
    token = _token(ana, catalog["newsletter"])
    browser = Client(enforce_csrf_checks=True)

    # when the link's preference page is opened without logging in
    page = browser.get(f"/unsubscribe/{token}/preferences/")

    # then Ana's preference center is shown, posting to the same address
    assert page.status_code == 200
    html = page.content.decode()
    assert "For Ana, opened from an email link" in html
    assert f'action="/unsubscribe/{token}/preferences/"' in html

    # and saving it changes Ana's preferences only, and comes back with "Saved"
    fields = form_fields(html)
    fields[f"type:{catalog['liked'].key}:push"] = "off"
    fields["csrfmiddlewaretoken"] = browser.cookies["csrftoken"].value
    saved = browser.post(f"/unsubscribe/{token}/preferences/", fields)
    assert saved.status_code == 302 and saved["Location"] == f"/unsubscribe/{token}/preferences/"
    assert stored(ana) == {(catalog["liked"].key, "push", False)} and stored(bob) == set()
    assert "Saved" in browser.get(saved["Location"]).content.decode()


@pytest.mark.parametrize("method", ["get", "post"])
def test_it_answers_404_to_a_tampered_token_or_a_gone_recipient_on_the_preference_page(catalog, method):
    ana, bob = RecipientFactory(), RecipientFactory()
    ana_payload, ana_signature = _token(ana, catalog["newsletter"]).rsplit(":", 1)
    bob_payload, _ = _token(bob, catalog["newsletter"]).rsplit(":", 1)
    gone = RecipientFactory()
    gone_token = _token(gone, catalog["newsletter"])
    gone.delete()

    for token in (f"{bob_payload}:{ana_signature}", "hello", gone_token):
        response = getattr(Client(), method)(f"/unsubscribe/{token}/preferences/", {"channel:email": "off"})
        assert response.status_code == 404, token
        assert "not valid" in response.content.decode()
    assert not Preference.objects.exists()


def test_it_serves_the_preference_script_and_stylesheet() -> None:
    for path in ("/static/notifications/preferences.js", "/static/notifications/preferences.css"):
        response = Client().get(path)
        assert response.status_code == 200, path
        assert response.getvalue()
