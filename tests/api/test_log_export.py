"""CSV export of the logs (``/api/log/export``, ``/api/log/self/export``) on every database:
filters, the owner's view and isolation, CSV-injection escaping, the header and file name, the
``LogExportEnabled`` gate, bad input, keyset batches with ``max_rows``, and constant memory while
200 000 rows stream out."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tests.seed import create_channel
from tollway.api import log_export
from tollway.db.models import Log
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR, LOG_TOPUP
from tollway.db.models.user import ROLE_COMMON
from tollway.usage.export import ADMIN_COLUMNS, USER_COLUMNS

pytestmark = pytest.mark.db

NOW = int(time.time())
T0 = NOW - 5 * 86400
MEMORY_ROWS = 200_000
MEMORY_LIMIT = 30 * 1024 * 1024


@pytest.fixture(autouse=True)
def export_routes(harness: AppHarness) -> None:
    """Mount the export router on the test app unless ``tollway.api.app`` already does."""
    api = harness.app.api
    assert isinstance(api, FastAPI)
    if not any(getattr(route, "path", "") == "/api/log/export" for route in api.routes):
        api.include_router(log_export.router, prefix="/api")


async def add_logs(harness: AppHarness, *rows: dict[str, Any]) -> list[int]:
    async with harness.runtime.db.log_session() as session, session.begin():
        logs = [Log(**{"content": "", "other": "", **row}) for row in rows]
        session.add_all(logs)
        await session.flush()
        return [log.id for log in logs]


def parse(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def header(response: httpx.Response) -> list[str]:
    return next(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))


def refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is False and fragment in body["message"], body


class World:
    """Logs of alice, bob and the admin across two channels."""

    def __init__(self, harness: AppHarness, admin: As, alice: As, bob: As) -> None:
        self.harness, self.admin, self.alice, self.bob = harness, admin, alice, bob
        self.l: list[int] = []
        self.ca = self.cb = 0

    async def seed(self) -> World:
        db = self.harness.runtime.db
        self.ca = await create_channel(db, "http://a.invalid", name="chan-a")
        self.cb = await create_channel(db, "http://b.invalid", name="=chan-b")
        a, b = self.alice, self.bob
        self.l = await add_logs(
            self.harness,
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 100, type=LOG_CONSUME,
                 token_name="alice-key", token_id=11, model_name="gpt-4o", channel_id=self.ca,
                 group="default", request_id="req-1", quota=250_000, prompt_tokens=10,
                 completion_tokens=5, use_time=2, is_stream=True, ip="10.0.0.1",
                 content="model ratio 1.5, 中文", other='{"admin_info":{"use_channel":["1"]}}'),
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 200, type=LOG_ERROR,
                 token_name="+alice", model_name="-gpt", channel_id=self.cb, group="@vip",
                 request_id="req-2", content='=HYPERLINK("http://evil.invalid","click"),\n"line 2"'),
            dict(user_id=b.user_id, username=b.username, created_at=T0 + 300, type=LOG_CONSUME,
                 token_name="bob-key", model_name="claude-3", channel_id=self.cb, quota=-5,
                 request_id="req-3", ip="\tcmd"),
            dict(user_id=b.user_id, username=b.username, created_at=T0 + 400, type=LOG_TOPUP,
                 content="top-up", quota=5000, request_id="req-4"),
        )  # fmt: skip
        return self


@pytest.fixture
async def world(harness: AppHarness, as_admin: As, as_user: As) -> World:
    bob = await make_user(harness, "bob", ROLE_COMMON)
    return await World(harness, as_admin, as_user, bob).seed()


async def test_admin_export(world: World) -> None:
    await check_admin_rows_filters_and_header(world)
    await check_formulas_are_escaped(world)


async def check_admin_rows_filters_and_header(world: World) -> None:
    l1, l2, l3, l4 = world.l
    response = await world.admin.get("/api/log/export")
    assert response.headers["content-disposition"].startswith('attachment; filename="logs-earliest-')
    assert response.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM for spreadsheets
    assert header(response) == list(ADMIN_COLUMNS)
    rows = parse(response)
    assert [int(row["id"]) for row in rows] == [l4, l3, l2, l1]  # newest first, like the console
    first = rows[-1]
    assert first == {
        "id": str(l1), "created_at": datetime.fromtimestamp(T0 + 100, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "type": "consume", "username": "alice", "token_name": "alice-key", "model_name": "gpt-4o",
        "quota": "250000", "cost_usd": "0.500000", "prompt_tokens": "10", "completion_tokens": "5",
        "use_time": "2", "is_stream": "true", "channel_id": str(world.ca), "channel_name": "chan-a",
        "group": "default", "request_id": "req-1", "ip": "10.0.0.1", "content": "model ratio 1.5, 中文",
    }  # fmt: skip
    assert rows[1]["quota"] == "-5" and rows[1]["cost_usd"] == "-0.000010"  # numbers are not escaped
    cases = {
        "type=2": [l3, l1],
        f"start_timestamp={T0 + 200}&end_timestamp={T0 + 300}": [l3, l2],
        "username=bob": [l4, l3],
        "token_name=alice-key": [l1],
        "model_name=%25gpt%25": [l2, l1],
        f"channel={world.cb}": [l3, l2],
        "request_id=req-4": [l4],
        "type=2&username=bob": [l3],
        "username=nobody": [],
    }
    for query, expected in cases.items():
        got = parse(await world.admin.get(f"/api/log/export?{query}"))
        assert [int(row["id"]) for row in got] == expected, query
    day = datetime.fromtimestamp(T0, UTC).strftime("%Y%m%d")
    ranged = await world.admin.get(f"/api/log/export?start_timestamp={T0}&end_timestamp={T0 + 86399}")
    assert f'filename="logs-{day}-' in ranged.headers["content-disposition"]


async def check_formulas_are_escaped(world: World) -> None:
    rows = {int(row["id"]): row for row in parse(await world.admin.get("/api/log/export"))}
    evil = rows[world.l[1]]
    assert evil["content"] == '\'=HYPERLINK("http://evil.invalid","click"),\n"line 2"'
    assert (evil["token_name"], evil["model_name"], evil["group"]) == ("'+alice", "'-gpt", "'@vip")
    assert evil["channel_name"] == "'=chan-b"
    assert rows[world.l[2]]["ip"] == "'\tcmd"


async def test_owner_export_gate_and_bad_input(world: World) -> None:
    await check_owner_export_is_isolated_and_has_no_channel_names(world)
    await check_gate_permissions_and_bad_input(world)


async def check_owner_export_is_isolated_and_has_no_channel_names(world: World) -> None:
    l1, l2, l3, l4 = world.l
    response = await world.alice.get("/api/log/self/export")
    assert header(response) == list(USER_COLUMNS)
    assert "channel_name" not in header(response)
    rows = parse(response)
    assert [int(row["id"]) for row in rows] == [l2, l1]
    assert "admin_info" not in response.text and "chan-a" not in response.text
    for query in ("username=bob", f"channel={world.cb}", "request_id=req-3"):
        got = [int(row["id"]) for row in parse(await world.alice.get(f"/api/log/self/export?{query}"))]
        assert got == ([] if query == "request_id=req-3" else [l2, l1]), query
    assert [int(row["id"]) for row in parse(await world.alice.get("/api/log/self/export?type=5"))] == [l2]
    assert [int(row["id"]) for row in parse(await world.bob.get("/api/log/self/export"))] == [l4, l3]


async def check_gate_permissions_and_bad_input(world: World) -> None:
    runtime = world.harness.runtime
    await runtime.options.save("LogExportEnabled", "false")
    refused(await world.alice.get("/api/log/self/export"), "LogExportEnabled")
    assert len(parse(await world.admin.get("/api/log/export"))) == 4  # administrators always may
    await runtime.options.save("LogExportEnabled", "true")
    assert len(parse(await world.alice.get("/api/log/self/export"))) == 2

    response = await world.alice.get("/api/log/export")
    assert response.status_code == 403 and response.json()["success"] is False
    assert (await world.harness.client.get("/api/log/self/export")).status_code == 401
    for path in ("/api/log/export", "/api/log/self/export"):
        for query, fragment in (
            ("max_rows=0", "max_rows"),
            ("max_rows=abc", "max_rows"),
            ("max_rows=1000001", "max_rows"),
            ("start_timestamp=yesterday", "start_timestamp"),
            ("type=42", "type"),
            ("model_name=" + "x" * 300, "model_name"),
        ):
            refused(await world.admin.get(f"{path}?{query}"), fragment)


async def test_batches_and_max_rows(harness: AppHarness, as_admin: As) -> None:
    values = ", ".join(f"({as_admin.user_id}, {T0 + i}, 2, 'row {i}', '', 'admin')" for i in range(4500))
    async with harness.runtime.db.log_engine.begin() as conn:
        await conn.execute(
            text(f"INSERT INTO logs (user_id, created_at, type, content, other, username) VALUES {values}")
        )
        all_ids = sorted((await conn.scalars(text("SELECT id FROM logs"))).all(), reverse=True)
    got = [int(row["id"]) for row in parse(await as_admin.get("/api/log/export"))]
    assert got == all_ids  # three batches of 2 000, no row lost or repeated
    capped = [int(row["id"]) for row in parse(await as_admin.get("/api/log/export?max_rows=2001"))]
    assert capped == all_ids[:2001]


# ----- memory ----------------------------------------------------------------------------------


async def insert_many(harness: AppHarness, user_id: int, count: int) -> None:
    """``count`` logs, one multi-row INSERT per 5 000 rows."""
    content = "chat completion, model ratio 1.5, completion ratio 3, group ratio 1"
    async with harness.runtime.db.log_engine.begin() as conn:
        for start in range(0, count, 5000):
            values = ", ".join(
                f"({user_id}, {T0 + i}, 2, '{content}', '', 'admin', 'sk-main', 'gpt-4o-mini', {i % 9000})"
                for i in range(start, min(start + 5000, count))
            )
            await conn.execute(
                text(
                    "INSERT INTO logs (user_id, created_at, type, content, other, username, token_name,"
                    f" model_name, quota) VALUES {values}"
                )
            )


class Sink:
    """Drives the ASGI app directly (httpx's in-process transport buffers whole bodies) and keeps
    only counts, so that what tracemalloc sees is the server's memory."""

    def __init__(self) -> None:
        self.status = 0
        self.bytes = 0
        self.lines = 0
        self.started = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body: bytes = message.get("body", b"")
            self.bytes += len(body)
            self.lines += body.count(b"\n")

    async def receive(self) -> dict[str, Any]:
        if not self.started:
            self.started = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")


async def stream(harness: AppHarness, who: As, url: str) -> Sink:
    sink = Sink()
    path, _, query = url.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in who.headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("tollway.test", 80),
    }  # fmt: skip
    await harness.app(scope, sink.receive, sink.send)  # type: ignore[arg-type]
    return sink


async def test_export_memory_stays_flat(harness: AppHarness, as_admin: As) -> None:
    await insert_many(harness, as_admin.user_id, MEMORY_ROWS)
    await stream(harness, as_admin, "/api/log/export?max_rows=5000")  # warm the statement caches
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        sink = await stream(harness, as_admin, "/api/log/export")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert sink.status == 200
    assert sink.lines == MEMORY_ROWS + 1
    assert sink.bytes > MEMORY_ROWS * 100  # the file itself is far larger than the bound below
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    print(f"\nexported {MEMORY_ROWS} rows, {sink.bytes / 2**20:.1f} MiB of CSV, in {elapsed:.1f} s "
          f"(under tracemalloc); peak traced memory {peak / 2**20:.2f} MiB")  # fmt: skip
