"""Wall-clock times in a recipient's timezone across real transitions
(notifications/services/local_time.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifications.services.local_time import wall_time_earliest, wall_time_instant


@pytest.mark.parametrize(
    ("wall", "zone", "instant", "why"),
    [
        # Europe/Paris, 29 March 2026: 02:00 CET -> 03:00 CEST.
        ("2026-03-29T09:00", "Europe/Paris", "2026-03-29T07:00", "after the jump, summer time"),
        ("2026-03-29T02:30", "Europe/Paris", "2026-03-29T01:30", "does not exist: 03:30 CEST"),
        ("2026-03-29T02:00", "Europe/Paris", "2026-03-29T01:00", "the first minute skipped: 03:00 CEST"),
        ("2026-03-29T01:59", "Europe/Paris", "2026-03-29T00:59", "just before the jump, winter time"),
        # Europe/Paris, 25 October 2026: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
        ("2026-10-25T02:30", "Europe/Paris", "2026-10-25T00:30", "ambiguous: the first, CEST"),
        ("2026-10-25T03:00", "Europe/Paris", "2026-10-25T02:00", "after the fold, winter time"),
        # America/New_York, 8 March 2026 (02:00 -> 03:00) and 1 November 2026 (01:00 twice).
        ("2026-03-08T02:15", "America/New_York", "2026-03-08T07:15", "does not exist: 03:15 EDT"),
        ("2026-11-01T01:30", "America/New_York", "2026-11-01T05:30", "ambiguous: the first, EDT"),
        ("2026-11-01T09:00", "America/New_York", "2026-11-01T14:00", "the day of the fold, EST"),
        # Australia/Lord_Howe moves by 30 minutes (5 April 2026: 02:00 +11 -> 01:30 +10:30).
        ("2026-04-05T01:45", "Australia/Lord_Howe", "2026-04-04T14:45", "ambiguous half hour: +11"),
        ("2026-10-04T02:10", "Australia/Lord_Howe", "2026-10-03T15:40", "skipped half hour: 02:40 +11"),
        # No daylight saving; and a name that is not a timezone counts as UTC.
        ("2026-06-01T09:00", "Asia/Kolkata", "2026-06-01T03:30", "+05:30 all year"),
        ("2026-06-01T09:00", "Mars/Olympus", "2026-06-01T09:00", "unknown: UTC"),
        ("2026-06-01T09:00", "", "2026-06-01T09:00", "none: UTC"),
    ],
)
def test_a_wall_time_is_the_instant_clocks_show_it(wall: str, zone: str, instant: str, why: str) -> None:
    got = wall_time_instant(datetime.fromisoformat(wall), zone)
    assert got == datetime.fromisoformat(instant).replace(tzinfo=UTC), why


def test_the_earliest_instant_is_the_one_of_utc_plus_14() -> None:
    wall = datetime(2026, 12, 1, 9, 0)
    assert wall_time_earliest(wall) == wall_time_instant(wall, "Pacific/Kiritimati")
    assert all(
        wall_time_instant(wall, zone) >= wall_time_earliest(wall)
        for zone in ("Pacific/Kiritimati", "Pacific/Auckland", "UTC", "Pacific/Pago_Pago", "Etc/GMT+12")
    )


def test_a_wall_time_with_an_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="no offset"):
        wall_time_instant(datetime(2026, 12, 1, 9, 0, tzinfo=UTC), "Europe/Paris")
