"""The role matrix, discovered rather than listed: every route in the OpenAPI schema whose
dependencies include ``admin_user`` or ``root_user`` refuses a lower role with 403, every protected
route refuses anonymous callers and a mismatched ``New-Api-User`` with 401. Routes added later are
covered without touching this file. Also: a common user sees only their own account."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tollway.api.deps import admin_user, current_user, root_user
from tollway.db.models.user import ROLE_COMMON

pytestmark = pytest.mark.db

_LEVELS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("root", root_user),
    ("admin", admin_user),
    ("user", current_user),
)
_PATH_PARAM = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # as the schema writes it, e.g. /api/user/{user_id}
    level: str  # "root", "admin" or "user"

    @property
    def url(self) -> str:
        """A plausible concrete URL: every path parameter becomes 1."""
        return _PATH_PARAM.sub("1", self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.level})"


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _level(route: RouteContext) -> str | None:
    """The strictest role dependency anywhere in the route's dependency tree (router-level
    dependencies included: the context is the route as mounted)."""
    dependant = getattr(route, "dependant", None)
    if not isinstance(dependant, Dependant):
        return None
    calls = set(_calls(dependant))
    return next((name for name, dependency in _LEVELS if dependency in calls), None)


async def protected_endpoints(harness: AppHarness) -> list[Endpoint]:
    """Every (method, path) the published schema lists, with the role its dependencies demand."""
    api = harness.app.api
    assert isinstance(api, FastAPI)
    response = await harness.client.get("/api/openapi.json")
    assert response.status_code == 200
    schema_paths: dict[str, dict[str, Any]] = response.json()["paths"]
    # Included routers stay nested in FastAPI's route list; this walks them with prefixes applied.
    routes = list(iter_route_contexts(api.routes))
    found: list[Endpoint] = []
    for path, operations in schema_paths.items():
        for method in operations:
            if method.upper() not in {"GET", "POST", "PUT", "DELETE", "PATCH"}:
                continue
            matching = [r for r in routes if r.path_format == path and method.upper() in (r.methods or set())]
            assert matching, f"no route object behind {method.upper()} {path} in the schema"
            level = _level(matching[0])
            if level is not None:
                found.append(Endpoint(method.upper(), path, level))
    return found


async def call(client: httpx.AsyncClient, endpoint: Endpoint, headers: dict[str, str]) -> httpx.Response:
    """No body: the role check runs before the body is read, so none is needed to be refused."""
    return await client.request(endpoint.method, endpoint.url, headers=headers)


def assert_refused(response: httpx.Response, status: int, endpoint: Endpoint) -> None:
    assert response.status_code == status, f"{endpoint}: {response.status_code} {response.text}"
    body = response.json()
    assert body["success"] is False, f"{endpoint}: {body}"
    assert isinstance(body["message"], str) and body["message"], f"{endpoint}: {body}"


async def test_lower_roles_are_refused_on_every_admin_and_root_route(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    endpoints = await protected_endpoints(harness)
    admin_only = [e for e in endpoints if e.level in ("admin", "root")]
    root_only = [e for e in endpoints if e.level == "root"]
    # This module's own routes must be among those discovered, so the matrix can never be empty.
    assert {("GET", "/api/user/"), ("POST", "/api/user/manage"), ("GET", "/api/group/")} <= {
        (e.method, e.path) for e in admin_only
    }
    assert any(e.path == "/api/user/{user_id}" and e.method == "DELETE" for e in admin_only)
    for endpoint in admin_only:
        assert_refused(await call(harness.client, endpoint, as_user.headers), 403, endpoint)
    for endpoint in root_only:
        assert_refused(await call(harness.client, endpoint, as_admin.headers), 403, endpoint)


async def test_anonymous_and_mismatched_callers_get_401_and_veloera_header_works(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    endpoints = await protected_endpoints(harness)
    assert any(e.level == "user" for e in endpoints)
    mismatched = {**as_admin.headers, "New-Api-User": str(as_user.user_id)}
    wrong_token = {"Authorization": "Bearer not-a-session", "New-Api-User": str(as_admin.user_id)}
    no_header = {"Authorization": as_admin.headers["Authorization"]}
    for endpoint in endpoints:
        assert_refused(await call(harness.client, endpoint, {}), 401, endpoint)
        assert_refused(await call(harness.client, endpoint, mismatched), 401, endpoint)
        assert_refused(await call(harness.client, endpoint, no_header), 401, endpoint)
        assert_refused(await call(harness.client, endpoint, wrong_token), 401, endpoint)

    # Veloera's console sends Veloera-User instead of New-Api-User; the same rules hold.
    bearer = {"Authorization": as_admin.headers["Authorization"]}
    veloera = {**bearer, "Veloera-User": str(as_admin.user_id)}
    listed = await harness.client.get("/api/user/", headers=veloera)
    assert listed.status_code == 200 and listed.json()["success"] is True
    assert listed.json()["data"]["total"] == 2
    me = await harness.client.get("/api/user/self", headers=veloera)
    assert me.status_code == 200 and me.json()["data"]["id"] == as_admin.user_id
    mismatched = {**bearer, "Veloera-User": str(as_user.user_id)}
    assert (await harness.client.get("/api/user/", headers=mismatched)).status_code == 401


async def test_a_common_user_sees_only_their_own_account(harness: AppHarness, as_user: As) -> None:
    bob = await make_user(harness, "bob", ROLE_COMMON, quota=42)
    for caller, other in ((as_user, bob), (bob, as_user)):
        me = await caller.get("/api/user/self")
        assert me.status_code == 200
        data = me.json()["data"]
        assert (data["id"], data["username"]) == (caller.user_id, caller.username)
        assert other.username not in me.text
        for url in (f"/api/user/{other.user_id}", "/api/user/", f"/api/user/search?keyword={other.username}"):
            response = await caller.get(url)
            assert response.status_code == 403 and response.json()["success"] is False
            assert other.username not in response.text
        for method, url, body in (
            ("PUT", "/api/user/", {"id": other.user_id, "username": "x", "group": "default", "quota": 0}),
            ("POST", "/api/user/manage", {"id": other.user_id, "action": "disable"}),
            ("DELETE", f"/api/user/{other.user_id}", None),
        ):
            response = await harness.client.request(method, url, headers=caller.headers, json=body)
            assert response.status_code == 403 and response.json()["success"] is False
    me = (await bob.get("/api/user/self")).json()["data"]
    assert (me["username"], me["quota"], me["status"]) == ("bob", 42, 1)
