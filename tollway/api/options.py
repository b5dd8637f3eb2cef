"""Options (``/api/option/``), the public price list (``/api/pricing``) and ``/api/models``.

Options are root-only, as in new-api. Values travel as strings; a declared option is validated
by its spec before it is stored, an undeclared one is kept verbatim (new-api stores any key).
``save`` makes the change visible to every worker of this node on its next request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from tollway.api.deps import CurrentUser, RootUser, RuntimeDep, Session, current_user
from tollway.api.envelope import fail, ok
from tollway.billing import defaults
from tollway.billing.pricing import MODEL_RATIO, SELF_USE_MODEL_RATIO, PriceTable
from tollway.errors import TollwayError
from tollway.http import JSONResponse
from tollway.options import REGISTRY, USER_USABLE_GROUPS, OptionError, OptionSpec
from tollway.relay.catalog import model_object
from tollway.relay.routing import AbilityIndex
from tollway.runtime import Runtime

router = APIRouter()

MAX_KEY_LENGTH = 255  # options.key_name is VARCHAR(255)
MAX_VALUE_BYTES = 65_535  # options.value is TEXT: 64 KiB on MySQL
PRICING_TTL = 60.0  # seconds; new-api caches its price list for one minute

_SECRET_SUFFIXES = ("token", "secret", "key")
_SECRET_WORDS = ("secret", "password", "private")

# Enabling a login method without its settings would lock users out (new-api refuses these).
_PREREQUISITES: dict[str, tuple[str, str]] = {
    "GitHubOAuthEnabled": ("GitHubClientId", "set GitHubClientId and GitHubClientSecret first"),
    "LinuxDOOAuthEnabled": ("LinuxDOClientId", "set LinuxDOClientId and LinuxDOClientSecret first"),
    "oidc.enabled": ("oidc.client_id", "set oidc.client_id and oidc.client_secret first"),
    "WeChatAuthEnabled": ("WeChatServerAddress", "set WeChatServerAddress and WeChatServerToken first"),
    "TurnstileCheckEnabled": ("TurnstileSiteKey", "set TurnstileSiteKey and TurnstileSecretKey first"),
    "EmailDomainRestrictionEnabled": ("EmailDomainWhitelist", "set EmailDomainWhitelist first"),
}


def is_secret(name: str) -> bool:
    """new-api hides names ending in Token, Secret or Key; Tollway also hides lower-case forms
    (``oidc.client_secret``) and anything naming a secret, password or private key."""
    lowered = name.lower()
    return lowered.endswith(_SECRET_SUFFIXES) or any(word in lowered for word in _SECRET_WORDS)


# ----- /api/option/ -------------------------------------------------------------------------------
class OptionUpdate(BaseModel):
    """``{key, value}``; unknown fields are ignored, as Gin does."""

    model_config = ConfigDict(extra="ignore")

    key: StrictStr
    value: StrictStr | StrictBool | StrictInt | StrictFloat | None = None


def _as_text(value: str | bool | int | float) -> str:
    """A console that sends JSON booleans or numbers means their text, as JavaScript's String()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_value(spec: OptionSpec[Any] | None, key: str, text: str) -> None:
    """Refusals the spec itself does not make: blank JSON, non-finite numbers."""
    if spec is None:
        return
    if spec.kind in (dict, list) and not text.strip():
        raise OptionError(f"{key} must be a JSON {'object' if spec.kind is dict else 'array'}")
    if spec.kind in (int, float) and text.strip():
        try:
            number = float(text)
        except ValueError:
            return  # the spec reports it
        if not math.isfinite(number):
            raise OptionError(f"{key} must be a finite number")


def _check_prerequisite(runtime: Runtime, key: str, text: str) -> None:
    required = _PREREQUISITES.get(key)
    if required is None or text.strip().lower() not in ("true", "1"):
        return
    name, hint = required
    if not (runtime.options.raw(name) or "").strip():
        raise OptionError(f"cannot enable {key}: {hint}")


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = error.get("loc", ())
    where = str(location[0]) if location else ""  # a union member's name may follow the field
    if error.get("type") == "missing":
        return f"invalid request: {where} is required"
    if where == "value":
        return "invalid request: value must be a string, a number or a boolean"
    return (
        f"invalid request: {where} must be a string" if where else "invalid request: expected a JSON object"
    )


@router.get("/option/")
async def list_options(runtime: RuntimeDep, _caller: RootUser) -> dict[str, Any]:
    values = runtime.options.export()
    data = [{"key": key, "value": values[key]} for key in sorted(values) if not is_secret(key)]
    return ok(data)


@router.put("/option/", response_model=None)
async def update_option(
    request: Request, runtime: RuntimeDep, _caller: RootUser
) -> dict[str, Any] | JSONResponse:
    """Body errors new-api cannot decode answer HTTP 400; refused values answer 200 success:false."""
    try:
        body = OptionUpdate.model_validate(orjson.loads(await request.body()))
    except orjson.JSONDecodeError:
        return fail('invalid request: the body must be JSON like {"key": "…", "value": "…"}', 400)
    except ValidationError as exc:
        return fail(_describe(exc), 400)
    key = body.key
    if not key.strip():
        return fail("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        return fail(f"key must be at most {MAX_KEY_LENGTH} characters")
    if body.value is None:
        return fail("value is required")
    text = _as_text(body.value)
    if len(text.encode()) > MAX_VALUE_BYTES:
        return fail(f"value must be at most {MAX_VALUE_BYTES} bytes")
    try:
        _check_value(REGISTRY.get(key), key, text)
        _check_prerequisite(runtime, key, text)
        await runtime.options.save(key, text)
    except OptionError as exc:
        return fail(str(exc))
    return ok()


@router.post("/option/rest_model_ratio")
async def reset_model_ratio(runtime: RuntimeDep, _caller: RootUser) -> dict[str, Any]:
    """Restore the built-in ``ModelRatio`` (new-api's path is spelled ``rest_``; other maps stay)."""
    await runtime.options.save(MODEL_RATIO.name, MODEL_RATIO.render(dict(defaults.DEFAULT_MODEL_RATIO)))
    return ok(message="model ratios reset to the defaults")


# ----- /api/pricing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PricingCache:
    """The computed price list of this process; rebuilt after a minute, or at once when the
    channels or the price options it was built from were replaced."""

    built_at: float
    index: AbilityIndex
    table: PriceTable
    rows: list[dict[str, Any]]


def _pricing_row(table: PriceTable, model: str, groups: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model_name": model,
        "quota_type": 0,
        "model_ratio": 0.0,
        "model_price": 0.0,
        "owner_by": model_object(model)["owned_by"],
        "completion_ratio": 0.0,
        "enable_groups": groups,
    }
    price = table.model_price(model)
    if price is not None:
        row.update(quota_type=1, model_price=price)
    else:
        ratio = table.model_ratio(model)
        row["model_ratio"] = SELF_USE_MODEL_RATIO if ratio is None else ratio
        row["completion_ratio"] = table.completion_ratio(model)
    return row


def _build_rows(index: AbilityIndex, table: PriceTable) -> list[dict[str, Any]]:
    groups_of: dict[str, list[str]] = {}
    for group in index.groups():
        for model in index.models_for_group(group):
            groups_of.setdefault(model, []).append(group)
    return [_pricing_row(table, model, groups_of[model]) for model in sorted(groups_of)]


async def _price_rows(request: Request, runtime: Runtime) -> list[dict[str, Any]]:
    channels = runtime.relay.channels
    if channels.stale:
        await channels.reload()
    index, table = channels.index, runtime.relay.engine.prices.get(runtime.options)
    cached: PricingCache | None = getattr(request.app.state, "pricing_cache", None)
    now = time.monotonic()
    if (
        cached is None
        or now - cached.built_at >= PRICING_TTL
        or cached.index is not index
        or cached.table is not table
    ):
        cached = PricingCache(now, index, table, _build_rows(index, table))
        request.app.state.pricing_cache = cached
    return cached.rows


async def _optional_caller(request: Request, runtime: Runtime) -> Session | None:
    try:
        return await current_user(request, runtime)
    except TollwayError:
        return None


def usable_groups(runtime: Runtime, user_group: str) -> dict[str, Any]:
    """``UserUsableGroups`` plus the user's own group when it is not listed (new-api)."""
    configured: dict[str, Any] = runtime.options.get(USER_USABLE_GROUPS)
    groups = dict(configured)
    if user_group and user_group not in groups:
        groups[user_group] = "user group"
    return groups


@router.get("/pricing")
async def get_pricing(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Every model an enabled channel serves, with its price; no login needed (a logged-in
    caller also sees their own group). No ``message`` key, as new-api."""
    rows = await _price_rows(request, runtime)
    caller = await _optional_caller(request, runtime)
    usable = usable_groups(runtime, (caller.user.group or "") if caller is not None else "")
    table = runtime.relay.engine.prices.get(runtime.options)
    group_ratio = {group: ratio for group, ratio in table.group_ratios.items() if group in usable}
    return {"success": True, "data": rows, "group_ratio": group_ratio, "usable_group": usable}


# ----- /api/models --------------------------------------------------------------------------------
@router.get("/models")
async def dashboard_models(runtime: RuntimeDep, _caller: CurrentUser) -> dict[str, Any]:
    """Channel type → the models channels of that type declare (new-api's DashboardListModels)."""
    channels = runtime.relay.channels
    if channels.stale:
        await channels.reload()
    by_type: dict[int, set[str]] = {}
    for channel in channels.by_id.values():
        by_type.setdefault(channel.type, set()).update(channel.models)
    return {"success": True, "data": {str(kind): sorted(by_type[kind]) for kind in sorted(by_type)}}
