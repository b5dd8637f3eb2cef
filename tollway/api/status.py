"""``GET /api/status``: what the console needs to draw itself, and ``/api/notice`` and friends."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tollway import __version__
from tollway import options as opt
from tollway.api.deps import RuntimeDep, caller_is_admin
from tollway.api.envelope import ok
from tollway.billing.epay import online_topup_enabled

router = APIRouter()


@router.get("/status")
async def get_status(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    o = runtime.options
    data: dict[str, Any] = {
        "version": __version__,
        "start_time": runtime.started_at,
        "setup": await runtime.refresh_setup_state(),
        "system_name": o.get(opt.SYSTEM_NAME),
        "logo": o.get(opt.LOGO),
        "footer_html": o.get(opt.FOOTER),
        "server_address": o.get(opt.SERVER_ADDRESS),
        "top_up_link": o.get(opt.TOP_UP_LINK),
        "docs_link": o.get(opt.DOCS_LINK),
        "price": o.get(opt.PRICE),
        "min_topup": o.get(opt.MIN_TOP_UP),
        "quota_per_unit": o.get(opt.QUOTA_PER_UNIT),
        "display_in_currency": o.get(opt.DISPLAY_IN_CURRENCY_ENABLED),
        "enable_batch_update": runtime.settings.batch_update_enabled,
        "enable_drawing": o.get(opt.DRAWING_ENABLED),
        "enable_task": o.get(opt.TASK_ENABLED),
        "enable_data_export": o.get(opt.DATA_EXPORT_ENABLED),
        "data_export_default_time": o.get(opt.DATA_EXPORT_DEFAULT_TIME),
        "default_collapse_sidebar": o.get(opt.DEFAULT_COLLAPSE_SIDEBAR),
        "enable_online_topup": online_topup_enabled(o),
        "mj_notify_enabled": o.get(opt.MJ_NOTIFY_ENABLED),
        "chats": o.get(opt.CHATS),
        "demo_site_enabled": o.get(opt.DEMO_SITE_ENABLED),
        "self_use_mode_enabled": o.get(opt.SELF_USE_MODE_ENABLED),
        "email_verification": o.get(opt.EMAIL_VERIFICATION_ENABLED),
        "github_oauth": o.get(opt.GITHUB_OAUTH_ENABLED),
        "github_client_id": o.get(opt.GITHUB_CLIENT_ID),
        "linuxdo_oauth": o.get(opt.LINUXDO_OAUTH_ENABLED),
        "linuxdo_client_id": o.get(opt.LINUXDO_CLIENT_ID),
        "telegram_oauth": o.get(opt.TELEGRAM_OAUTH_ENABLED),
        "telegram_bot_name": o.get(opt.TELEGRAM_BOT_NAME),
        "wechat_login": o.get(opt.WECHAT_AUTH_ENABLED),
        "wechat_qrcode": o.get(opt.WECHAT_QRCODE),
        "oidc_enabled": o.get(opt.OIDC_ENABLED),
        "oidc_client_id": o.get(opt.OIDC_CLIENT_ID),
        "oidc_authorization_endpoint": o.get(opt.OIDC_AUTHORIZATION_ENDPOINT),
        "turnstile_check": o.get(opt.TURNSTILE_CHECK_ENABLED),
        "turnstile_site_key": o.get(opt.TURNSTILE_SITE_KEY),
        "check_in_enabled": o.get(opt.CHECK_IN_ENABLED),
    }
    active = getattr(request.app.state, "active_requests", None)
    if active is not None and await caller_is_admin(request, runtime):  # operators' view of this worker
        data.update(active.snapshot())
        data["database_ok"] = runtime.health.last.ok if runtime.health.last is not None else None
    return ok(data)


@router.get("/notice")
async def get_notice(runtime: RuntimeDep) -> dict[str, Any]:
    return ok(runtime.options.get(opt.NOTICE))


@router.get("/about")
async def get_about(runtime: RuntimeDep) -> dict[str, Any]:
    return ok(runtime.options.get(opt.ABOUT))


@router.get("/home_page_content")
async def get_home_page_content(runtime: RuntimeDep) -> dict[str, Any]:
    return ok(runtime.options.get(opt.HOME_PAGE_CONTENT))
