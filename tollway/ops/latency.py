"""new-api's ``bin/time_test.sh`` as a library: time N chat requests against a gateway.

The script sends ``count`` sequential, non-stream requests (one user message "echo hi",
``max_tokens: 1``) to ``https://<domain>/v1/chat/completions``, prints each HTTP status and the
total time, then ``Average time: <mean>±<population std-dev>``. :func:`latency_check` does the
same, optionally concurrently or streaming, and :class:`LatencyReport` adds min/max,
percentiles, a status histogram (transport failures count as the pseudo-status ``error``) and,
for streams, the time to the first byte of the body.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

DEFAULT_MODEL = "gpt-3.5-turbo"  # the script's default
ERROR = "error"
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Sample:
    """One request: its HTTP status (None after a transport error), total time and TTFB in seconds."""

    index: int
    status: int | None
    seconds: float
    ttfb: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """The histogram key: the status code as text, or ``error``."""
        return ERROR if self.status is None else str(self.status)

    def line(self) -> str:
        """The script's per-request line."""
        status = self.label if self.error is None else f"{ERROR} ({self.error})"
        return f"HTTP status code: {status}, Time taken: {self.seconds:.6f}"


@dataclass(frozen=True)
class Summary:
    """Mean ± population standard deviation, extremes and percentiles of some durations."""

    count: int
    mean: float
    std: float
    minimum: float
    maximum: float
    percentiles: dict[int, float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no values to summarise")
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            mean=statistics.fmean(ordered),
            std=statistics.pstdev(ordered),
            minimum=ordered[0],
            maximum=ordered[-1],
            percentiles={p: percentile(ordered, p) for p in PERCENTILES},
        )

    def render(self) -> str:
        points = "  ".join(f"p{p} {value:.6f}" for p, value in self.percentiles.items())
        return (
            f"mean {self.mean:.6f} ± {self.std:.6f}  min {self.minimum:.6f}  {points}  max {self.maximum:.6f}"
        )


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of sorted values, interpolating linearly between closest ranks."""
    if not ordered:
        raise ValueError("no values")
    if not 0 <= p <= 100:
        raise ValueError("percentile must be between 0 and 100")
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LatencyReport:
    """The samples of one run and what is computed from them."""

    url: str
    model: str
    stream: bool
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def times(self) -> Summary:
        """Total times of every request, failures included (as the script's curl timings are)."""
        return Summary.of([s.seconds for s in self.samples])

    @property
    def ttfb(self) -> Summary | None:
        """Time to the first body byte of the requests that received one."""
        values = [s.ttfb for s in self.samples if s.ttfb is not None]
        return Summary.of(values) if values else None

    @property
    def mean(self) -> float:
        return self.times.mean

    @property
    def std(self) -> float:
        return self.times.std

    @property
    def histogram(self) -> dict[str, int]:
        """Requests per status code (as text), numerically ordered, ``error`` last."""
        counts = Counter(s.label for s in self.samples)
        keys = sorted((k for k in counts if k != ERROR), key=int)
        if ERROR in counts:
            keys.append(ERROR)
        return {key: counts[key] for key in keys}

    @property
    def ok(self) -> int:
        """Requests answered with a 2xx status."""
        return sum(1 for s in self.samples if s.status is not None and 200 <= s.status < 300)

    def render(self, *, per_request: bool = False) -> str:
        """A readable report; the last line is the script's ``Average time: <mean>±<std>``."""
        times = self.times
        mode = "stream" if self.stream else "non-stream"
        lines = [f"POST {self.url}  model={self.model}  {mode}  concurrency={self.concurrency}"]
        if per_request:
            lines += [s.line() for s in self.samples]
        statuses = ", ".join(f"{key}×{n}" for key, n in self.histogram.items())
        lines.append(f"Requests: {self.count} ({self.ok} ok)  status codes: {statuses}")
        errors = Counter(s.error for s in self.samples if s.error)
        lines += [f"  {ERROR}: {message} ×{n}" for message, n in errors.most_common(5)]
        lines.append(f"Time (s): {times.render()}")
        ttfb = self.ttfb
        if self.stream and ttfb is not None:
            lines.append(f"Time to first byte (s): {ttfb.render()}")
        if self.wall_seconds > 0:
            rate = self.count / self.wall_seconds
            lines.append(f"Wall time: {self.wall_seconds:.6f} s ({rate:.2f} requests/s)")
        lines.append(f"Average time: {times.mean:.6f}±{times.std:.6f}")
        return "\n".join(lines)


def chat_url(base_url: str) -> str:
    """``<base>/v1/chat/completions``; a bare domain (the script's argument) means https."""
    base = base_url.strip().rstrip("/")
    if "://" not in base:
        base = "https://" + base
    base = base.removesuffix("/v1/chat/completions").removesuffix("/v1")
    url = base + "/v1/chat/completions"
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    return url


async def latency_check(
    base_url: str,
    key: str,
    *,
    count: int,
    model: str = DEFAULT_MODEL,
    concurrency: int = 1,
    stream: bool = False,
    timeout: float = 60,  # noqa: ASYNC109 - per request (curl's --max-time), not for the whole run
    prompt: str = "echo hi",
    max_tokens: int = 1,
    keepalive: bool = False,
    on_sample: Callable[[Sample], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LatencyReport:
    """Send ``count`` chat requests, ``concurrency`` at a time (1 = one after another, as the script).

    Each request opens its own connection unless ``keepalive`` (curl in the script does too).
    ``on_sample`` sees every sample as it completes. Never raises for a failed request: HTTP
    errors are statuses and transport failures the ``error`` pseudo-status.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    url = chat_url(base_url)
    body: dict[str, object] = {
        "messages": [{"content": prompt, "role": "user"}],
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
    }
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0
    )
    report = LatencyReport(url=url, model=model, stream=stream, concurrency=min(concurrency, count))
    samples: list[Sample | None] = [None] * count
    next_index = iter(range(count))

    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout), limits=limits, transport=transport, follow_redirects=False
    ) as client:

        async def worker() -> None:
            for index in next_index:
                sample = await _one(client, url, headers, body, index, timeout)
                samples[index] = sample
                if on_sample is not None:
                    on_sample(sample)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(report.concurrency):
                group.create_task(worker())
        report.wall_seconds = time.perf_counter() - started
    report.samples = [s for s in samples if s is not None]
    return report


async def _one(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: dict[str, object],
    index: int,
    limit: float,
) -> Sample:
    started = time.perf_counter()
    ttfb: float | None = None
    status: int | None = None
    try:
        # The whole request, body included, within ``timeout`` (curl's --max-time).
        async with asyncio.timeout(limit):
            async with client.stream("POST", url, headers=headers, json=body) as response:
                status = response.status_code
                async for chunk in response.aiter_raw():
                    if chunk and ttfb is None:
                        ttfb = time.perf_counter() - started
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return Sample(index, None, time.perf_counter() - started, ttfb, _describe(exc, status))
    return Sample(index, status, time.perf_counter() - started, ttfb)


def _describe(exc: BaseException, status: int | None) -> str:
    name = "Timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f" after HTTP {status}" if status is not None else ""
    return f"{name}{where}: {text}"[:200] if text else f"{name}{where}"
