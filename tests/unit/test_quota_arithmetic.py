"""Quota arithmetic: limits by plan and edition, local days across DST, class names."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from gateway import quota

BERLIN = ZoneInfo("Europe/Berlin")


def test_limits_follow_the_spec(rules):
    zylker, lumen = rules.orgs["zylker"], rules.orgs["lumen"]
    assert quota.limit_for(zylker, "individual") == 300 * 3  # paid: 300 x active users
    assert quota.limit_for(zylker, "bulk") == 500  # professional
    assert quota.limit_for(lumen, "individual") == 50  # free: 50 x 1 user
    assert quota.limit_for(lumen, "bulk") == 250  # standard
    many = replace(lumen, users={f"u{i}@lumen.example": next(iter(lumen.users.values())) for i in range(9)})
    assert quota.limit_for(many, "individual") == 200  # the free plan counts at most 4 users
    ent = replace(zylker, edition="enterprise", bulk_addon=2000)
    assert quota.limit_for(ent, "bulk") == 2250  # the add-on stops at 2,250


@pytest.mark.parametrize("day, hours", [("2026-03-29", 23), ("2026-10-25", 25), ("2026-11-23", 24)])
def test_day_boundaries_in_local_time(day, hours):
    start = datetime.fromisoformat(day).replace(tzinfo=BERLIN)
    reset = quota.next_reset("Europe/Berlin", start.astimezone(timezone.utc))
    assert reset.hour == 0 and reset.minute == 0
    assert (reset.astimezone(timezone.utc) - start.astimezone(timezone.utc)).total_seconds() == hours * 3600


def test_local_day_is_the_organisations_date():
    late_utc = datetime(2026, 11, 23, 23, 30, tzinfo=timezone.utc)
    assert quota.local_day("Asia/Tokyo", late_utc).isoformat() == "2026-11-24"
    assert quota.local_day("America/New_York", late_utc).isoformat() == "2026-11-23"


@pytest.mark.parametrize("value, expected", [
    ("individual", "individual"), (" Workflow ", "bulk"), ("macro", "bulk"), ("scheduled-bulk", "bulk"),
    ("newsletter", None), ("", None), (None, None),
])
def test_class_header_names(value, expected):
    assert quota.class_from_header(value) == expected
