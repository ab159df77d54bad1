"""The database backend of project/database/base.py: timestamps read with psycopg's
compiled loader, exactly as Django's own loader would give them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import BaseTzLoader, register_tzloader
from psycopg import _cmodule
from psycopg.pq import Format

from notifications.models import Recipient
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

SELECTED = ", ".join(
    f"'{value}'::timestamptz"
    for value in (
        "2026-11-30 12:34:56.789012+00",
        "2026-11-30 12:34:56+05:30",
        "1999-12-31 23:59:59.5-08",
        "9999-12-31 23:59:59.999999+00",
    )
)


@pytest.mark.skipif(_cmodule._psycopg is None, reason="psycopg's compiled module is not installed")
def test_timestamps_are_read_by_the_compiled_loader_with_the_connection_time_zone():
    connection.ensure_connection()
    loader = connection.connection.adapters.get_loader(1184, Format.TEXT)  # timestamptz

    assert not issubclass(loader, BaseTzLoader)
    assert loader.timezone == connection.timezone == UTC


@pytest.mark.parametrize("session_zone", ["UTC", "America/New_York"])
def test_timestamps_read_are_exactly_what_djangos_own_loader_reads(session_zone):
    with connection.cursor() as db:
        db.execute(f"SET TIME ZONE '{session_zone}'")
        try:
            db.execute(f"SELECT {SELECTED}, NULL::timestamptz")
            ours = list(db.fetchone())
            with connection.connection.cursor() as raw:
                register_tzloader(connection.timezone, raw)  # Django's pure-Python loader
                raw.execute(f"SELECT {SELECTED}, NULL::timestamptz")
                djangos = list(raw.fetchone())
        finally:
            db.execute("SET TIME ZONE 'UTC'")

    assert ours == djangos
    assert [value.tzinfo for value in ours[:-1]] == [value.tzinfo for value in djangos[:-1]]
    assert ours[-1] is None
    if session_zone == "UTC":
        assert ours[1] == datetime(2026, 11, 30, 7, 4, 56, tzinfo=UTC)


def test_model_fields_round_trip_through_the_orm():
    recipient = RecipientFactory()
    stamp = datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC)
    Recipient.objects.filter(id=recipient.id).update(created_at=stamp)

    assert Recipient.objects.get(id=recipient.id).created_at == stamp
