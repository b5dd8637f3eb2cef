"""Channel health: hard vs soft failures, the sliding window, and the switches that stop disables."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest

from tollway.options import AUTOMATIC_DISABLE_CHANNEL_ENABLED, OptionSpec
from tollway.providers.base import UpstreamFailure
from tollway.relay.channel import TYPE_ANTHROPIC, TYPE_GEMINI, TYPE_OPENAI, ChannelSnapshot
from tollway.relay.health import (
    AUTOMATIC_DISABLE_KEYWORDS,
    CHANNEL_FAILURE_THRESHOLD,
    CHANNEL_FAILURE_WINDOW_SECONDS,
    DEFAULT_DISABLE_KEYWORDS,
    ChannelHealth,
    FailureKind,
    classify,
    parse_keywords,
)

T = TypeVar("T")
KEYWORDS = parse_keywords("\n".join(DEFAULT_DISABLE_KEYWORDS))


class FakeOptions:
    def __init__(self, **values: Any) -> None:
        self.values: dict[str, Any] = {
            AUTOMATIC_DISABLE_CHANNEL_ENABLED.name: True,
            CHANNEL_FAILURE_THRESHOLD.name: 3,
            CHANNEL_FAILURE_WINDOW_SECONDS.name: 60,
        }
        self.values.update(values)

    def get(self, spec: OptionSpec[T]) -> T:
        value: T = self.values.get(spec.name, spec.default)
        return value


def ch(cid: int = 1, **kw: Any) -> ChannelSnapshot:
    return ChannelSnapshot(id=cid, type=TYPE_OPENAI, name="c", base_url="https://up", keys=("k",), **kw)


def fail(
    status: int, message: str = "boom", type_: str = "upstream_error", code: Any = None
) -> UpstreamFailure:
    return UpstreamFailure(status=status, message=message, type=type_, code=code)


# ----- classify -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "status", "timed_out", "connection_error", "channel_type", "expected"),
    [
        (fail(401), 401, False, False, TYPE_OPENAI, FailureKind.HARD),
        (None, 401, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(403), 403, False, False, TYPE_GEMINI, FailureKind.HARD),
        (fail(403), 403, False, False, TYPE_OPENAI, FailureKind.NONE),
        (fail(400, code="invalid_api_key"), 400, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(403, code="account_deactivated"), 403, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(400, code="billing_not_active"), 400, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(429, type_="insufficient_quota"), 429, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(403, type_="insufficient_user_quota"), 403, False, False, TYPE_OPENAI, FailureKind.HARD),
        (fail(400, type_="authentication_error"), 400, False, False, TYPE_ANTHROPIC, FailureKind.HARD),
        (fail(403, type_="permission_error"), 403, False, False, TYPE_ANTHROPIC, FailureKind.HARD),
        (fail(403, type_="forbidden"), 403, False, False, TYPE_OPENAI, FailureKind.HARD),
        (
            fail(400, "YOUR CREDIT BALANCE IS TOO LOW to access the API"),
            400,
            False,
            False,
            TYPE_ANTHROPIC,
            FailureKind.HARD,
        ),
        (fail(500, "Operation not allowed here"), 500, False, False, TYPE_OPENAI, FailureKind.HARD),
        (None, 0, True, False, TYPE_OPENAI, FailureKind.SOFT),
        (None, 0, False, True, TYPE_OPENAI, FailureKind.SOFT),
        (fail(500), 500, False, False, TYPE_OPENAI, FailureKind.SOFT),
        (fail(502), 502, False, False, TYPE_OPENAI, FailureKind.SOFT),
        (fail(504), 504, False, False, TYPE_OPENAI, FailureKind.SOFT),
        (fail(429, "rate limited"), 429, False, False, TYPE_OPENAI, FailureKind.NONE),
        (fail(400, "bad request"), 400, False, False, TYPE_OPENAI, FailureKind.NONE),
        (fail(404, "no such model"), 404, False, False, TYPE_OPENAI, FailureKind.NONE),
        (fail(413), 413, False, False, TYPE_OPENAI, FailureKind.NONE),
        (fail(400, code=401), 400, False, False, TYPE_OPENAI, FailureKind.NONE),
    ],
)
def test_classify(
    failure: UpstreamFailure | None,
    status: int,
    timed_out: bool,
    connection_error: bool,
    channel_type: int,
    expected: FailureKind,
) -> None:
    kind = classify(
        failure,
        status=status,
        timed_out=timed_out,
        connection_error=connection_error,
        channel_type=channel_type,
        keywords=KEYWORDS,
    )
    assert kind is expected


def test_keywords_are_configurable_and_case_insensitive() -> None:
    failure = fail(400, "Quota Gone For Good")
    args: dict[str, Any] = {"status": 400, "timed_out": False, "connection_error": False, "channel_type": 1}
    assert classify(failure, keywords=KEYWORDS, **args) is FailureKind.NONE
    assert classify(failure, keywords=("quota gone",), **args) is FailureKind.HARD
    assert classify(failure, keywords=("QUOTA GONE",), **args) is FailureKind.HARD
    assert classify(failure, keywords=("", "  "), **args) is FailureKind.NONE


def test_parse_keywords_and_option_default() -> None:
    assert parse_keywords(" A b \n\n  c\r\n") == ("a b", "c")
    assert parse_keywords(AUTOMATIC_DISABLE_KEYWORDS.default) == KEYWORDS
    assert len(KEYWORDS) == 7
    health = ChannelHealth(FakeOptions(AutomaticDisableKeywords="One\nTwo"))
    assert health.keywords() == ("one", "two")
    assert ChannelHealth(FakeOptions()).keywords() == KEYWORDS


# ----- ChannelHealth -------------------------------------------------------------------------
def test_hard_failure_disables_at_once() -> None:
    health = ChannelHealth(FakeOptions())
    assert health.record(ch(), FailureKind.HARD, "401", now=100.0) is True


def test_none_never_disables() -> None:
    health = ChannelHealth(FakeOptions())
    assert not any(health.record(ch(), FailureKind.NONE, "429", now=100.0 + i) for i in range(20))


def test_soft_failures_disable_at_the_threshold_within_the_window() -> None:
    health = ChannelHealth(FakeOptions())
    assert health.record(ch(), FailureKind.SOFT, "timeout", now=100.0) is False
    assert health.record(ch(), FailureKind.SOFT, "timeout", now=110.0) is False
    assert health.failures(1) == 2
    assert health.record(ch(), FailureKind.SOFT, "timeout", now=120.0) is True
    assert health.failures(1) == 0


def test_old_soft_failures_expire() -> None:
    health = ChannelHealth(FakeOptions())
    assert not health.record(ch(), FailureKind.SOFT, "5xx", now=0.0)
    assert not health.record(ch(), FailureKind.SOFT, "5xx", now=30.0)
    assert not health.record(ch(), FailureKind.SOFT, "5xx", now=61.0)  # the first one has left the window
    assert health.failures(1) == 2
    assert health.record(ch(), FailureKind.SOFT, "5xx", now=62.0)


def test_windows_are_per_channel_and_success_clears() -> None:
    health = ChannelHealth(FakeOptions())
    health.record(ch(1), FailureKind.SOFT, "x", now=1.0)
    health.record(ch(1), FailureKind.SOFT, "x", now=2.0)
    assert not health.record(ch(2), FailureKind.SOFT, "x", now=3.0)
    health.record_success(1)
    assert health.failures(1) == 0
    assert not health.record(ch(1), FailureKind.SOFT, "x", now=4.0)


def test_memory_is_bounded_by_the_threshold() -> None:
    health = ChannelHealth(FakeOptions(ChannelFailureThreshold=1000, ChannelFailureWindowSeconds=10))
    for i in range(5_000):
        health.record(ch(), FailureKind.SOFT, "x", now=i * 0.001)
    assert health.failures(1) <= 1000


def test_auto_ban_off_never_disables() -> None:
    health = ChannelHealth(FakeOptions())
    assert not health.record(ch(auto_ban=False), FailureKind.HARD, "401", now=1.0)
    assert not any(health.record(ch(auto_ban=False), FailureKind.SOFT, "x", now=float(i)) for i in range(10))


def test_switch_off_never_disables() -> None:
    health = ChannelHealth(FakeOptions(AutomaticDisableChannelEnabled=False))
    assert not health.record(ch(), FailureKind.HARD, "401", now=1.0)
    assert not any(health.record(ch(), FailureKind.SOFT, "x", now=float(i)) for i in range(10))


def test_already_disabled_snapshot_is_ignored() -> None:
    assert not ChannelHealth(FakeOptions()).record(ch(status=3), FailureKind.HARD, "401", now=1.0)


def test_duplicate_disables_are_suppressed_for_a_few_seconds() -> None:
    health = ChannelHealth(FakeOptions(), suppress_seconds=5.0)
    assert health.record(ch(1), FailureKind.HARD, "401", now=100.0)
    assert not health.record(ch(1), FailureKind.HARD, "401", now=101.0)
    assert not health.record(ch(1), FailureKind.SOFT, "x", now=102.0)
    assert health.record(ch(2), FailureKind.HARD, "401", now=102.0)
    assert health.record(ch(1), FailureKind.HARD, "401", now=105.5)


def test_uses_the_clock_when_no_time_is_given() -> None:
    clock = iter([10.0, 11.5, 12.0]).__next__
    health = ChannelHealth(FakeOptions(ChannelFailureThreshold=2, ChannelFailureWindowSeconds=1), clock=clock)
    assert not health.record(ch(), FailureKind.SOFT, "x")
    assert not health.record(ch(), FailureKind.SOFT, "x")  # at 11.5 the first one has expired
    assert health.record(ch(), FailureKind.SOFT, "x")
