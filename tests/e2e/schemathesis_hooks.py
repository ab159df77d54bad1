"""Schemathesis hooks for the schema test (tests/e2e/test_api_schema.py), loaded through
tests/e2e/schemathesis.toml.

The API's schema uses one string format JSON Schema does not define: ``phone``, a number
libphonenumber accepts as valid (notifications/services/validation.py, phone_normalise).
Its pattern gives the shape; this strategy gives numbers that are valid, written the ways
people write them, so schema-valid requests are really valid.
"""

from __future__ import annotations

import os
import re

import django
import phonenumbers
import schemathesis
from django.conf import settings
from hypothesis import strategies as st

if not settings.configured:
    # Loaded by the schemathesis CLI: the rule's pattern comes from the platform's own code.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()

from notifications.services.validation import PHONE_PATTERN  # noqa: E402


def _valid_numbers() -> list[str]:
    shape = re.compile(PHONE_PATTERN)
    numbers: set[str] = set()
    kinds = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in kinds:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None or not phonenumbers.is_valid_number(example):
                continue
            for form in (phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL):
                written = phonenumbers.format_number(example, form)
                # At most 32 characters: the recipient field's limit.
                if shape.fullmatch(written) and len(written) <= 32:
                    numbers.add(written)
    return sorted(numbers)


schemathesis.openapi.format("phone", st.sampled_from(_valid_numbers()))
