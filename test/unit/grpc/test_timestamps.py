"""The servicers' Timestamp conversion is protobuf's FromDatetime, done cheaper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from entrypoint.grpc.messages import timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 1, 2, 345_678, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 1, 2, 345_678),  # noqa: DTZ001 (naive: taken as UTC, as protobuf does)
        datetime(2026, 12, 2, 5, 1, 2, 7, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_it_is_what_from_datetime_makes(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_none_stays_none() -> None:
    assert timestamp(None) is None
