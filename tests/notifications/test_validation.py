"""The value rules every door shares (notifications/services/validation.py): what each
accepts, the stored form it returns, and the message it gives otherwise."""

from __future__ import annotations

import pytest

from notifications.services.validation import (
    RuleViolation,
    fallback_rules_clean,
    key_check,
    locale_check,
    phone_normalise,
    recipient_fields_clean,
    suppression_address_normalise,
    webhook_secret_check,
    webhook_url_check,
)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("+44 (0)20 7946 0958", "+442079460958"),
        ("+1 (415) 555-0100", "+14155550100"),
        (" +14155550100 ", "+14155550100"),
        ("", ""),
    ],
)
def test_it_stores_phone_numbers_in_e164(given: str, stored: str) -> None:
    assert phone_normalise(given) == stored


@pytest.mark.parametrize("given", ["12345", "+1415555010*", "+1 415 FLOWERS", "+44020", "0044 20 7946 0958"])
def test_it_refuses_what_is_not_a_whole_international_number_naming_it(given: str) -> None:
    with pytest.raises(RuleViolation, match="not a valid phone number in international form") as refused:
        phone_normalise(given)
    assert repr(given.strip()) in str(refused.value)


def test_it_refuses_keys_and_locales_with_a_trailing_newline() -> None:
    assert key_check("order.shipped") == "order.shipped"
    assert locale_check("pt-BR") == "pt-BR"
    with pytest.raises(RuleViolation):
        key_check("order.shipped\n")
    with pytest.raises(RuleViolation, match="not a locale"):
        locale_check("en\n")


def test_it_refuses_characters_postgresql_cannot_store_by_field() -> None:
    cleaned, errors = recipient_fields_clean({"name": "Ana\x00", "locale": "en", "timezone": "Europe/Lisbon"})

    assert list(errors) == ["name"] and "cannot be stored" in errors["name"][0]
    assert cleaned == {"locale": "en", "timezone": "Europe/Lisbon"}


def test_it_names_unknown_recipient_fields_instead_of_dropping_them() -> None:
    _, errors = recipient_fields_clean({"emial": "ana@example.com"})

    assert "unknown field" in errors["emial"][0]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "got scheme 'ftp'"),
        ("http://example.com/hook", "plain http is allowed only to 127.0.0.1 or localhost"),
        ("https://", "is not a URL"),
    ],
)
def test_it_refuses_webhook_urls_saying_why(url: str, message: str) -> None:
    with pytest.raises(RuleViolation, match=message):
        webhook_url_check(url)


def test_it_accepts_https_and_loopback_http_webhooks() -> None:
    assert webhook_url_check("https://hooks.example.com/a") == "https://hooks.example.com/a"
    assert webhook_url_check("http://127.0.0.1:8100/hooks/x") == "http://127.0.0.1:8100/hooks/x"


def test_it_demands_a_16_character_secret_of_generic_webhooks_only() -> None:
    assert webhook_secret_check(kind="generic", secret="s" * 16) == "s" * 16
    with pytest.raises(RuleViolation, match="at least 16 characters, got 5"):
        webhook_secret_check(kind="generic", secret="short")
    with pytest.raises(RuleViolation, match="not signed"):
        webhook_secret_check(kind="slack", secret="s" * 16)


def test_it_stores_suppressed_addresses_normalised() -> None:
    assert suppression_address_normalise(kind="email", address=" Ana@Example.COM ") == "ana@example.com"
    assert suppression_address_normalise(kind="phone", address="+44 (0)20 7946 0958") == "+442079460958"
    with pytest.raises(RuleViolation, match="unknown kind"):
        suppression_address_normalise(kind="fax", address="+442079460958")


def test_it_cleans_fallback_rules_and_names_each_problem_by_its_place() -> None:
    rules, errors = fallback_rules_clean(
        [
            {"from": "push", "to": "sms", "after_seconds": 60.0},
            {"from": "pager", "to": "sms", "after_seconds": 1},
            {"from": "push", "to": "email", "after_seconds": 5},
        ],
        channels=["push"],
        template_channels={"push", "sms"},
    )

    assert rules[0] == {"from": "push", "to": "sms", "after_seconds": 60}
    assert "'pager' is not a channel" in errors["fallbacks[1].from"][0]
    assert "already has a rule for 'push'" in errors["fallbacks[2].from"][0]
    assert "has no template" in errors["fallbacks[2].to"][0]
