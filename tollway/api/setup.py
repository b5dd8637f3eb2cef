"""First run: ``GET``/``POST /api/setup`` create the root user once."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from tollway.api.deps import RuntimeDep
from tollway.api.envelope import fail, ok
from tollway.auth.passwords import hash_password
from tollway.db.models import Setup, User
from tollway.db.models.user import ROLE_ROOT
from tollway.http import JSONResponse
from tollway.options import DEMO_SITE_ENABLED, SELF_USE_MODE_ENABLED

router = APIRouter()

ROOT_INITIAL_QUOTA = 100_000_000
MIN_PASSWORD, MAX_PASSWORD, MAX_USERNAME = 8, 64, 12


class SetupRequest(BaseModel):
    username: str = Field(default="", max_length=200)
    password: str = Field(default="", max_length=200)
    confirmPassword: str = Field(default="", max_length=200)
    SelfUseModeEnabled: bool = False
    DemoSiteEnabled: bool = False


@router.get("/setup")
async def get_setup(runtime: RuntimeDep) -> dict[str, object]:
    done = await runtime.refresh_setup_state()
    dialect = runtime.db.dialect
    return ok(
        {
            "status": done,
            "root_init": done,
            "database_type": "postgres" if dialect == "postgresql" else dialect,
        }
    )


@router.post("/setup", response_model=None)
async def post_setup(body: SetupRequest, runtime: RuntimeDep) -> dict[str, object] | JSONResponse:
    if await runtime.refresh_setup_state():
        return fail("the system is already set up", 400)
    username = body.username.strip()
    if not username:
        return fail("username is required", 400)
    if len(username) > MAX_USERNAME:
        return fail(f"username must be at most {MAX_USERNAME} characters", 400)
    if not MIN_PASSWORD <= len(body.password) <= MAX_PASSWORD:
        return fail(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters", 400)
    if body.password != body.confirmPassword:
        return fail("the two passwords do not match", 400)

    hashed = await hash_password(body.password)
    try:
        async with runtime.db.session() as session, session.begin():
            # The fixed id makes a concurrent second setup fail on the primary key.
            session.add(Setup(id=1, is_setup=True, version="0.1.0"))
            await session.flush()
            session.add(
                User(
                    username=username,
                    password=hashed,
                    display_name="Root User",
                    role=ROLE_ROOT,
                    quota=ROOT_INITIAL_QUOTA,
                )
            )
    except IntegrityError:
        return fail("the system is already set up", 400)
    await runtime.options.save(SELF_USE_MODE_ENABLED.name, "true" if body.SelfUseModeEnabled else "false")
    await runtime.options.save(DEMO_SITE_ENABLED.name, "true" if body.DemoSiteEnabled else "false")
    runtime.setup_done = True
    return ok(message="setup complete: log in as the root user")
