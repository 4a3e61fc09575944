"""The conversation order of an email: its Date, or arrival when Date is missing,
unparseable or in the future; at whole seconds."""

from __future__ import annotations

from datetime import datetime, timezone

from gateway.parse import parse_message
from gateway.store.emails import sort_time
from tests.helpers import message


def test_sort_time_rules():
    arrived = datetime(2026, 11, 23, 9, 0, 0, 500000, tzinfo=timezone.utc)

    def with_date(value):
        return parse_message(message(date=value) if value else message(date=None))

    whole = arrived.replace(microsecond=0)  # Date's resolution; arrival breaks ties
    assert sort_time(with_date(None), arrived) == whole
    assert sort_time(with_date("Mon, 23 Nov 2026 18:00:00 +0900"), arrived) == whole
    assert sort_time(with_date("Mon, 23 Nov 2026 08:00:00 +0000"), arrived) == datetime(2026, 11, 23, 8, tzinfo=timezone.utc)
    assert sort_time(with_date("Mon, 30 Nov 2026 08:00:00 +0000"), arrived) == whole  # future
    assert sort_time(with_date("not a date"), arrived) == whole
