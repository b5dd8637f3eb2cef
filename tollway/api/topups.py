"""Online top-up through an EPay gateway, as new-api does it, plus the order lists.

``POST /api/user/amount`` and ``POST /api/user/pay`` answer in new-api's payment envelope
``{message: "success"|"error", data}`` (no ``success`` key: new-api's console and the
newapi-python client read ``message``). ``/api/user/epay/notify`` is called by the gateway, not by
a user: it is authenticated by the notification's signature and answers the plain text
``success`` (processed, or already processed: stop retrying) or ``fail`` (retry later).
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError
from sqlalchemy import ColumnElement, func, or_, select
from starlette.responses import PlainTextResponse

from tollway import options as opt
from tollway.api.deps import AdminUser, CurrentUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.api.paging import Page
from tollway.api.topup_orders import Outcome, complete_order, fail_order, open_order, parse_money, quote
from tollway.billing import epay
from tollway.db.models import TopUp, User
from tollway.errors import BusinessError, NotFound
from tollway.http import JSONResponse
from tollway.runtime import Runtime

log = logging.getLogger("tollway.topups")
router = APIRouter()

MAX_TRADE_NO = 255
MAX_KEYWORD = 255
MAX_NOTIFY_BODY = 64 * 1024
_METHOD_ALIASES = {"zfb": "alipay", "wx": "wxpay"}
_METHOD = re.compile(r"[A-Za-z0-9_-]{1,32}")
_RAW = 256  # coarse cap on incoming strings; precise limits are checked with clear messages


class AmountBody(BaseModel):
    amount: StrictInt
    top_up_code: StrictStr | None = Field(default=None, max_length=_RAW)  # accepted, unused (new-api)


class PayBody(AmountBody):
    payment_method: StrictStr = Field(max_length=_RAW)


class CompleteBody(BaseModel):
    trade_no: StrictStr = Field(max_length=MAX_TRADE_NO)


_Body = TypeVar("_Body", bound=BaseModel)


def _payment(message: str, data: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, "data": data, **extra})


def _refuse(reason: str) -> JSONResponse:
    return _payment("error", reason)


async def _read(request: Request, model: type[_Body]) -> _Body | str:
    """The JSON body as ``model``, or the reason it is not one."""
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return "invalid request: the body is not valid JSON"
    if not isinstance(raw, dict):
        return "invalid request: the body must be a JSON object"
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ()))
        return f"invalid request: {where}: {error.get('msg', 'invalid')}" if where else "invalid request"


def _payment_method(raw: str) -> str:
    method = raw.strip()
    method = _METHOD_ALIASES.get(method, method)
    if not method:
        raise BusinessError("please choose a payment method")
    if not _METHOD.fullmatch(method):
        raise BusinessError("unknown payment method")
    return method


def _site(runtime: Runtime, request: Request) -> str:
    configured = runtime.options.get(opt.SERVER_ADDRESS).strip().rstrip("/")
    return configured or str(request.base_url).rstrip("/")


def _callback_base(runtime: Runtime, request: Request) -> str:
    custom = runtime.options.get(epay.CUSTOM_CALLBACK_ADDRESS).strip().rstrip("/")
    return custom or _site(runtime, request)


def order_json(row: TopUp, username: str | None = None) -> dict[str, Any]:
    """new-api's TopUp object (``create_time``, ``complete_time``), plus the quota it credits."""
    item: dict[str, Any] = {
        "id": row.id,
        "user_id": row.user_id,
        "amount": row.amount,
        "money": row.money,
        "quota": row.quota,
        "trade_no": row.trade_no,
        "payment_method": row.payment_method,
        "payment_provider": "epay",
        "create_time": row.created_time,
        "complete_time": row.paid_time,
        "status": row.status,
    }
    if username is not None:
        item["username"] = username
    return item


# ----- quoting and paying ------------------------------------------------------------------------


@router.get("/user/topup/info")
async def topup_info(runtime: RuntimeDep, _user: CurrentUser) -> dict[str, Any]:
    options = runtime.options
    return ok(
        {
            "enable_online_topup": epay.online_topup_enabled(options),
            "min_topup": options.get(opt.MIN_TOP_UP),
            "price": options.get(opt.PRICE),
            "topup_group_ratio": options.get(epay.TOPUP_GROUP_RATIO),
            "amount_options": options.get(epay.AMOUNT_OPTIONS),
        }
    )


@router.post("/user/amount", response_model=None)
async def topup_amount(request: Request, runtime: RuntimeDep, user: CurrentUser) -> JSONResponse:
    """``data`` = what a top-up of ``amount`` costs, with two decimals."""
    body = await _read(request, AmountBody)
    if isinstance(body, str):
        return _refuse(body)
    try:
        priced = quote(runtime.options, body.amount, user.user.group)
    except BusinessError as exc:
        return _refuse(exc.message)
    return _payment("success", f"{priced.money:.2f}")


@router.post("/user/pay", response_model=None)
async def topup_pay(request: Request, runtime: RuntimeDep, user: CurrentUser) -> JSONResponse:
    """Open a pending order; ``data`` = the signed form to post to ``url`` (the gateway)."""
    body = await _read(request, PayBody)
    if isinstance(body, str):
        return _refuse(body)
    account = epay.merchant(runtime.options)
    if account is None:
        return _refuse("online top-up is not available: no payment gateway is configured")
    try:
        method = _payment_method(body.payment_method)
        priced = quote(runtime.options, body.amount, user.user.group)
        order = await open_order(runtime, user.id, priced, method)
    except BusinessError as exc:
        return _refuse(exc.message)
    form = epay.purchase_form(
        account,
        pay_type=method,
        trade_no=order.trade_no,
        name=f"TUC{body.amount}",
        money=f"{priced.money:.2f}",
        notify_url=_callback_base(runtime, request) + "/api/user/epay/notify",
        return_url=_site(runtime, request) + "/log",
    )
    return _payment("success", form, url=account.submit_url)


# ----- the gateway's notification -----------------------------------------------------------------


async def _notify_params(request: Request) -> dict[str, str]:
    """The notification's fields: the query of a GET, the form body of a POST (first value wins)."""
    if request.method == "POST":
        body = await request.body()
        if len(body) > MAX_NOTIFY_BODY:
            return {}
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    else:
        pairs = list(request.query_params.multi_items())
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name, value)
    return params


async def _settle(runtime: Runtime, params: dict[str, str]) -> bool:
    """Apply one notification; True when the gateway may stop sending it."""
    account = epay.merchant(runtime.options)
    if account is None or not params:
        return False
    if not epay.verify(params, account.key) or params.get("pid", "") != account.pid:
        log.warning("epay notification refused: bad signature or merchant id")
        return False
    trade_no = params.get("out_trade_no", "")
    if not trade_no or len(trade_no) > MAX_TRADE_NO:
        return False
    if params.get("trade_status") != epay.TRADE_SUCCESS:
        return await fail_order(runtime, trade_no)
    paid = parse_money(params.get("money", ""))
    if paid is None:
        return False
    outcome = await complete_order(runtime, trade_no, paid_money=paid)
    if outcome in (Outcome.UNKNOWN, Outcome.MONEY_MISMATCH):
        log.warning("epay notification for order %s refused: %s", trade_no, outcome.value)
        return False
    return True


@router.get("/user/epay/notify", response_model=None)
@router.post("/user/epay/notify", response_model=None)
async def epay_notify(request: Request, runtime: RuntimeDep) -> PlainTextResponse:
    try:
        settled = await _settle(runtime, await _notify_params(request))
    except BusinessError as exc:
        log.warning("epay notification not applied: %s", exc.message)
        settled = False
    return PlainTextResponse("success" if settled else "fail")


# ----- orders ---------------------------------------------------------------------------------------


async def _orders(
    runtime: Runtime, request: Request, where: list[ColumnElement[bool]], *, with_username: bool
) -> dict[str, Any]:
    page = Page.from_request(request)
    joined = select(TopUp, User.username).outerjoin(User, User.id == TopUp.user_id).where(*where)
    counted = select(func.count()).select_from(TopUp).outerjoin(User, User.id == TopUp.user_id)
    async with runtime.db.session() as session:
        total = await session.scalar(counted.where(*where))
        rows = await session.execute(
            joined.order_by(TopUp.id.desc()).offset(page.offset).limit(page.page_size)
        )
        items = [order_json(row, (name or "") if with_username else None) for row, name in rows.all()]
    return ok(page.answer(items, int(total or 0)))


@router.get("/user/topup/self")
async def my_orders(
    request: Request, runtime: RuntimeDep, user: CurrentUser, keyword: str = ""
) -> dict[str, Any]:
    """The caller's orders, newest first; ``keyword`` filters on the trade number."""
    where: list[ColumnElement[bool]] = [TopUp.user_id == user.id]
    keyword = keyword.strip()[:MAX_KEYWORD]
    if keyword:
        where.append(TopUp.trade_no.contains(keyword, autoescape=True))
    return await _orders(runtime, request, where, with_username=False)


@router.get("/user/topup")
async def all_orders(
    request: Request, runtime: RuntimeDep, _admin: AdminUser, keyword: str = ""
) -> dict[str, Any]:
    """Every order, newest first; ``keyword`` matches the trade number or the username."""
    where: list[ColumnElement[bool]] = []
    keyword = keyword.strip()[:MAX_KEYWORD]
    if keyword:
        where.append(
            or_(
                TopUp.trade_no.contains(keyword, autoescape=True),
                User.username.contains(keyword, autoescape=True),
            )
        )
    return await _orders(runtime, request, where, with_username=True)


@router.post("/user/topup/complete")
async def complete(body: CompleteBody, runtime: RuntimeDep, admin: AdminUser) -> dict[str, Any]:
    """Credit an unpaid order by hand (the gateway's notification never arrived). Idempotent: an
    order already paid is left as it is."""
    trade_no = body.trade_no.strip()
    if not trade_no:
        raise BusinessError("trade_no is required")
    outcome = await complete_order(runtime, trade_no, completed_by=admin.user.username)
    if outcome is Outcome.UNKNOWN:
        raise NotFound("top-up order not found")
    if outcome is Outcome.ALREADY_DONE:
        return ok(message="the order was already completed")
    return ok(message="the order is completed and the user credited")
