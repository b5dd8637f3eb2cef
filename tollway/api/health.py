"""``GET /api/status/test``: may the administrator trust that the server reaches its database?

new-api pings the main database (a success is cached for 10 s) and answers 503 when it does not
answer. The route is for administrators, and checking a role needs the database; so while the
database is down, the route answers 503 to any caller whose credentials pass the checks that need
no database (a correctly signed session naming the ``New-Api-User`` user, or something shaped
like an access token, which cannot be verified then) and 401 to callers without credentials. That reveals no
more than the public ``/readyz`` does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from tollway.api.deps import RuntimeDep, admin_user, session_codec
from tollway.auth.sessions import SESSION_COOKIE
from tollway.errors import ServiceUnavailable, Unauthorized
from tollway.ops.health import DATABASE, LOG_DATABASE, DatabaseHealth, HealthReport
from tollway.runtime import Runtime

router = APIRouter()

DATABASE_FAILED = "database connection failed"
STATE_ATTRIBUTE = "database_health"


def database_health(request: Request, runtime: Runtime) -> DatabaseHealth:
    """The app's shared :class:`DatabaseHealth` (``app.state.database_health``); one without
    Redis is made on first use when the app did not set one."""
    health: DatabaseHealth | None = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if health is None:
        health = DatabaseHealth(runtime.db)
        setattr(request.app.state, STATE_ATTRIBUTE, health)
    return health


def _databases_up(report: HealthReport) -> bool:
    """Redis is not part of this answer: new-api's route pings the database only."""
    return report.checks.get(DATABASE, False) and report.checks.get(LOG_DATABASE, True)


def _presents_credentials(request: Request, runtime: Runtime) -> bool:
    """What can be checked without the database: a session must be validly signed for the user
    named by ``New-Api-User`` (or ``Veloera-User``); another bearer is taken as an access token."""
    claimed = request.headers.get("new-api-user") or request.headers.get("veloera-user")
    if claimed is None:
        return False
    codec = session_codec(runtime)
    cookie = request.cookies.get(SESSION_COOKIE)
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else header.strip()
    if cookie:
        return str(codec.decode(cookie)) == claimed.strip()
    if not bearer:
        return False
    user_id = codec.decode(bearer)
    if user_id is None:  # access tokens are URL-safe base64; signed sessions have dots
        return "." not in bearer
    return str(user_id) == claimed.strip()


@router.get("/status/test")
async def status_test(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """``{success:true, message:"Server is running"}`` or 503 ``{success:false, message:…}``."""
    health = database_health(request, runtime)
    if _databases_up(await health.check()):
        try:
            await admin_user(request, runtime)
        except (SQLAlchemyError, OSError, TimeoutError):
            # Down since the cached ping: look again so the next caller does not wait for it.
            await health.check(max_age=0)
            if not _presents_credentials(request, runtime):
                raise Unauthorized("not logged in") from None
            raise ServiceUnavailable(DATABASE_FAILED) from None
        return {"success": True, "message": "Server is running"}
    if not _presents_credentials(request, runtime):
        raise Unauthorized("not logged in: send the session cookie or Authorization: Bearer <access token>")
    raise ServiceUnavailable(DATABASE_FAILED)
