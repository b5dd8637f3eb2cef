"""The time_test.sh port: timings, statistics, the status histogram and stream TTFB, on a fake server."""

from __future__ import annotations

import math
import re
import socket
import statistics
from collections.abc import AsyncIterator

import pytest
from fakes.upstream import FakeUpstream

from tollway.ops.latency import (
    DEFAULT_MODEL,
    LatencyReport,
    Sample,
    Summary,
    chat_url,
    latency_check,
    percentile,
)

CHAT = "/v1/chat/completions"
AVERAGE_LINE = re.compile(r"^Average time: (\d+\.\d{6})±(\d+\.\d{6})$")


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sequential_requests_like_the_script(up: FakeUpstream) -> None:
    seen: list[Sample] = []
    report = await latency_check(up.base_url, "sk-test", count=5, on_sample=seen.append)

    assert up.count(CHAT) == 5
    first = up.requests[0]
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.json == {
        "messages": [{"content": "echo hi", "role": "user"}],
        "model": DEFAULT_MODEL,
        "stream": False,
        "max_tokens": 1,
    }
    assert report.count == 5 and [s.index for s in seen] == [0, 1, 2, 3, 4]
    assert report.histogram == {"200": 5}
    assert report.ok == 5
    times = [s.seconds for s in report.samples]
    assert all(t > 0 for t in times)
    assert report.mean == pytest.approx(statistics.fmean(times))
    assert report.std == pytest.approx(statistics.pstdev(times))
    summary = report.times
    assert summary.minimum == min(times) and summary.maximum == max(times)
    p = summary.percentiles
    assert summary.minimum <= p[50] <= p[90] <= p[95] <= p[99] <= summary.maximum
    assert seen[0].line().startswith("HTTP status code: 200, Time taken: ")


async def test_histogram_counts_upstream_errors(up: FakeUpstream) -> None:
    up.fail_next("status_500", times=2)
    report = await latency_check(up.base_url + "/v1", "sk-test", count=6, model="gpt-4o-mini")

    assert up.last.model == "gpt-4o-mini"
    assert report.histogram == {"200": 4, "500": 2}
    assert report.ok == 4
    assert [s.status for s in report.samples[:2]] == [500, 500]
    text = report.render(per_request=True)
    lines = text.splitlines()
    assert "200×4, 500×2" in text
    assert sum(1 for line in lines if line.startswith("HTTP status code: 500,")) == 2
    assert "p50" in text and "p99" in text and "min" in text and "max" in text
    match = AVERAGE_LINE.match(lines[-1])
    assert match, lines[-1]
    assert match.group(1) == f"{report.mean:.6f}" and match.group(2) == f"{report.std:.6f}"
    assert "Time to first byte" not in text  # only for streams


async def test_stream_records_time_to_first_byte(up: FakeUpstream) -> None:
    up.configure(ttft=0.15, chunk_delay=0.03)
    report = await latency_check(up.base_url, "sk-test", count=3, stream=True)

    assert all(r.stream for r in up.requests)
    assert report.histogram == {"200": 3}
    for sample in report.samples:
        assert sample.ttfb is not None
        assert sample.ttfb >= 0.15  # the first chunk comes after the upstream's think time
        assert sample.seconds >= sample.ttfb + 0.03  # … and more chunks follow it
    ttfb = report.ttfb
    assert ttfb is not None and ttfb.count == 3
    assert 0.15 <= ttfb.mean < report.mean
    text = report.render()
    assert "Time to first byte (s): mean " in text
    assert AVERAGE_LINE.match(text.splitlines()[-1])


async def test_concurrency_overlaps_requests(up: FakeUpstream) -> None:
    up.configure(ttft=0.3)
    report = await latency_check(up.base_url, "sk-test", count=4, concurrency=4)
    assert report.histogram == {"200": 4}
    assert report.concurrency == 4
    assert all(s.seconds >= 0.3 for s in report.samples)
    assert report.wall_seconds < 0.3 * 4 * 0.75  # clearly not one after another
    assert "concurrency=4" in report.render()


async def test_transport_errors_are_the_error_pseudo_status() -> None:
    port = _free_port()  # nothing listens there
    report = await latency_check(f"http://127.0.0.1:{port}", "sk-test", count=3, timeout=2)
    assert report.histogram == {"error": 3}
    assert report.ok == 0
    assert all(s.status is None and s.error for s in report.samples)
    text = report.render(per_request=True)
    assert "error×3" in text
    assert "HTTP status code: error (ConnectError" in text
    assert AVERAGE_LINE.match(text.splitlines()[-1])


async def test_timeout_is_an_error_and_the_run_goes_on(up: FakeUpstream) -> None:
    up.fail_next("hang")
    report = await latency_check(up.base_url, "sk-test", count=2, timeout=0.3)
    assert report.histogram == {"200": 1, "error": 1}
    hung = report.samples[0]
    assert hung.status is None and hung.error is not None and "Timeout" in hung.error
    assert 0.3 <= hung.seconds < 2


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await latency_check("http://127.0.0.1:1", "k", count=0)
    with pytest.raises(ValueError):
        await latency_check("http://127.0.0.1:1", "k", count=1, concurrency=0)
    with pytest.raises(ValueError):
        await latency_check("ftp://example.com", "k", count=1)


def test_chat_url_accepts_the_scripts_bare_domain() -> None:
    assert chat_url("api.example.com") == "https://api.example.com/v1/chat/completions"
    assert chat_url("http://127.0.0.1:3000") == "http://127.0.0.1:3000/v1/chat/completions"
    assert chat_url("http://127.0.0.1:3000/v1/") == "http://127.0.0.1:3000/v1/chat/completions"
    assert chat_url("https://gw/v1/chat/completions") == "https://gw/v1/chat/completions"


def test_statistics() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(1, 101))), 90) == pytest.approx(90.1)
    summary = Summary.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary.mean == 3.0
    assert summary.std == pytest.approx(math.sqrt(2))  # population, as the script's bc does
    assert (summary.minimum, summary.maximum) == (1.0, 5.0)
    assert summary.percentiles[50] == 3.0
    with pytest.raises(ValueError):
        Summary.of([])


def test_render_of_a_hand_made_report() -> None:
    report = LatencyReport(url="http://gw/v1/chat/completions", model="m", stream=False, concurrency=1)
    report.samples = [
        Sample(0, 200, 0.5),
        Sample(1, 200, 1.5),
        Sample(2, 429, 1.0),
        Sample(3, None, 2.0, error="X"),
    ]
    report.wall_seconds = 5.0
    assert report.histogram == {"200": 2, "429": 1, "error": 1}
    lines = report.render().splitlines()
    assert lines[-1] == "Average time: 1.250000±0.559017"
    assert "Wall time: 5.000000 s (0.80 requests/s)" in lines
