"""``/api/debug/profile``: root captures on demand and downloads (raw or rendered), everyone else
gets 403, names cannot escape the directory, a second capture answers busy; and the app's
lifespan runs the CPU monitor when ``ENABLE_PPROF`` is on (and only then)."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import As
from tests.conftest import AppHarness, DatabaseFactory
from tests.unit.test_profiler import BUSY_NAME, burning, wait_for
from tollway.app import create_app
from tollway.ops.profiler import list_profiles
from tollway.settings import Settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # no database work: one backend is enough

ROUTE = "/api/debug/profile"


@pytest.fixture
async def settings(
    databases: DatabaseFactory, make_settings: Callable[..., Settings], tmp_path: Path
) -> Settings:
    return make_settings(sql_dsn=await databases.create(), pprof_dir=str(tmp_path / "pprof"))


async def test_root_captures_lists_and_downloads(harness: AppHarness, as_root: As, tmp_path: Path) -> None:
    async with burning():
        response = await as_root.post(ROUTE, params={"seconds": 1})
    body = response.json()
    assert response.status_code == 200 and body["success"], body
    name = body["data"]["name"]
    assert body["data"]["pid"] == os.getpid() and body["data"]["seconds"] == 1
    assert name.endswith(f"-{os.getpid()}.pyisession.gz")
    assert (tmp_path / "pprof" / name).stat().st_size == body["data"]["size"]

    listing = (await as_root.get(ROUTE)).json()
    assert listing["success"] and listing["data"]["capturing"] is False
    assert [item["name"] for item in listing["data"]["items"]] == [name]

    raw = await as_root.get(f"{ROUTE}/{name}")
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/gzip"
    assert name in raw.headers["content-disposition"]
    session = orjson.loads(gzip.decompress(raw.content))
    assert 0.9 < session["duration"] < 10 and session["sample_count"] > 10

    text = await as_root.get(f"{ROUTE}/{name}", params={"format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert BUSY_NAME in text.text
    html = await as_root.get(f"{ROUTE}/{name}", params={"format": "html"})
    assert html.headers["content-type"].startswith("text/html") and BUSY_NAME in html.text
    flame = await as_root.get(f"{ROUTE}/{name}", params={"format": "speedscope"})
    assert BUSY_NAME in {frame["name"] for frame in flame.json()["shared"]["frames"]}
    assert ".speedscope.json" in flame.headers["content-disposition"]
    bad_format = (await as_root.get(f"{ROUTE}/{name}", params={"format": "svg"})).json()
    assert bad_format["success"] is False and "format" in bad_format["message"]


async def test_seconds_from_body_and_bounds(harness: AppHarness, as_root: As) -> None:
    body = (await as_root.post(ROUTE, json={"seconds": 1})).json()
    assert body["success"] and body["data"]["seconds"] == 1
    for params, json_body in (({"seconds": 0.5}, None), ({"seconds": 61}, None), ({}, {"seconds": 600})):
        refused = await as_root.post(ROUTE, params=params, json=json_body)
        assert refused.json()["success"] is False and "seconds" in refused.json()["message"]
    assert len(list_profiles(harness.runtime.profiler.directory)) == 1


async def test_only_root(harness: AppHarness, as_admin: As, as_user: As) -> None:
    for caller in (as_admin, as_user):
        for response in (
            await caller.post(ROUTE, params={"seconds": 1}),
            await caller.get(ROUTE),
            await caller.get(f"{ROUTE}/cpu-20200101000000-1.pyisession.gz"),
        ):
            assert response.status_code == 403 and response.json()["success"] is False
    anonymous = await harness.client.get(ROUTE)
    assert anonymous.status_code == 401
    assert not harness.runtime.profiler.directory.exists()


async def test_bad_names_are_not_found(harness: AppHarness, as_root: As, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (tmp_path / "pprof").mkdir()
    for name in (
        "..%2Fsecret.txt",
        "..%2F..%2Fetc%2Fpasswd",
        "secret.txt",
        "cpu-20200101000000-1.pyisession.gz",
    ):
        response = await as_root.get(f"{ROUTE}/{name}")
        assert response.status_code == 404, name
        assert response.json()["success"] is False and "do not serve" not in response.text
    response = await as_root.get(f"{ROUTE}/notes.txt")
    assert "is not a profile file name" in response.json()["message"]


async def test_second_capture_answers_busy(harness: AppHarness, as_root: As) -> None:
    first = asyncio.create_task(as_root.post(ROUTE, params={"seconds": 2}))
    await wait_for(lambda: harness.runtime.profiler.busy)
    assert (await as_root.get(ROUTE)).json()["data"]["capturing"] is True
    second = await as_root.post(ROUTE, params={"seconds": 1})
    assert second.status_code == 200
    assert second.json()["success"] is False and "busy" in second.json()["message"]
    assert (await first).json()["success"] is True
    assert len(list_profiles(harness.runtime.profiler.directory)) == 1


async def run_app(settings: Settings, seconds: float) -> tuple[list[str], float]:
    """Serve with ``settings`` while the burner runs; answers the profile names and shutdown time."""
    app = create_app(settings, run_migrations=True)
    directory = Path(settings.pprof_dir)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as client:
            assert (await client.get("/api/status")).status_code == 200
            async with burning():
                if settings.enable_pprof:
                    await wait_for(lambda: bool(list_profiles(directory)))
                else:
                    await asyncio.sleep(seconds)
                stopping = asyncio.get_running_loop().time()
    stopped = asyncio.get_running_loop().time() - stopping
    return [item.name for item in list_profiles(directory)], stopped


async def test_lifespan_runs_the_monitor_when_enabled(
    make_settings: Callable[..., Settings], databases: DatabaseFactory, tmp_path: Path
) -> None:
    common: dict[str, Any] = {
        "pprof_cpu_threshold": 5,  # low: on a shared machine the burner may get a fraction of a core
        "pprof_duration": 0.5,
        "pprof_cooldown": 0,
        "pprof_interval": 0.1,
    }
    off = make_settings(sql_dsn=await databases.create(), pprof_dir=str(tmp_path / "off"), **common)
    names, _ = await run_app(off, 1.5)
    assert names == []  # ENABLE_PPROF is off by default

    on = make_settings(
        sql_dsn=await databases.create(), pprof_dir=str(tmp_path / "on"), enable_pprof=True, **common
    )
    names, stopped = await run_app(on, 0)
    assert names and all(name.endswith(f"-{os.getpid()}.pyisession.gz") for name in names)
    assert stopped < 5  # the monitor (possibly mid-capture) stops with the other jobs
    assert sys.getprofile() is None
