"""Online top-up through HTTP on every database, against a fake EPay gateway: quoting, opening an
order (row, signed form), the gateway's notification crediting exactly once (repeated and in
parallel), forged or mismatched notifications changing nothing, failed payments, manual
completion by an administrator, the order lists, the options, and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tollway.api import topups
from tollway.db.models import Log, TopUp, User
from tollway.db.models.log import LOG_TOPUP
from tollway.db.models.user import ROLE_COMMON

pytestmark = pytest.mark.db

SITE = "http://tollway.test"
GATEWAY = "https://pay.example.com"
PID = "1001"
MERCHANT_KEY = "merchant-secret-key-0123456789"


@pytest.fixture(autouse=True)
def topup_routes(harness: AppHarness) -> None:
    """Serve the top-up routes whether or not the app registers the module yet."""
    api = cast(FastAPI, harness.app.api)
    if not any(getattr(route, "path", "") == "/api/user/epay/notify" for route in api.routes):
        api.include_router(topups.router, prefix="/api")


class FakeEpay:
    """A 彩虹易支付 gateway as a merchant sees it: it accepts a purchase form only when its MD5
    signature is right and, once the payer paid, signs a notification with the merchant key and
    calls the form's ``notify_url``. The signature is computed here independently of Tollway."""

    def __init__(self, client: httpx.AsyncClient, key: str = MERCHANT_KEY, pid: str = PID) -> None:
        self.client = client
        self.key = key
        self.pid = pid

    @staticmethod
    def signature(params: dict[str, str], key: str) -> str:
        kept = sorted((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != "")
        return hashlib.md5(("&".join(f"{k}={v}" for k, v in kept) + key).encode()).hexdigest()

    def accepts(self, form: dict[str, str]) -> bool:
        return (
            form.get("pid") == self.pid
            and form.get("sign_type") == "MD5"
            and form.get("sign") == self.signature(form, self.key)
        )

    def notification(self, form: dict[str, str], **fields: str) -> dict[str, str]:
        params = {
            "pid": self.pid,
            "trade_no": "2024" + uuid.uuid4().hex[:16],
            "out_trade_no": form["out_trade_no"],
            "type": form["type"],
            "name": form["name"],
            "money": form["money"],
            "trade_status": "TRADE_SUCCESS",
            "param": "",
        }
        params.update(fields)
        params["sign"] = self.signature(params, self.key)
        params["sign_type"] = "MD5"
        return params

    async def notify(self, form: dict[str, str], params: dict[str, str], *, post: bool = False) -> str:
        path = urlsplit(form["notify_url"]).path
        if post:
            response = await self.client.post(path, data=params)
        else:
            response = await self.client.get(path, params=params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


async def configure(harness: AppHarness, **extra: str) -> None:
    values = {"PayAddress": GATEWAY, "EpayId": PID, "EpayKey": MERCHANT_KEY, "ServerAddress": SITE, **extra}
    for name, value in values.items():
        await harness.runtime.options.save(name, value)


async def pay(user: As, amount: Any = 10, method: Any = "alipay", **extra: Any) -> dict[str, Any]:
    body = {"amount": amount, "payment_method": method, "top_up_code": "", **extra}
    answer: dict[str, Any] = (await user.post("/api/user/pay", json=body)).json()
    return answer


async def open_order(user: As, amount: int = 10, method: str = "alipay") -> dict[str, str]:
    answer = await pay(user, amount, method)
    assert answer["message"] == "success", answer
    form: dict[str, str] = answer["data"]
    return form


async def quote(user: As, body: Any) -> dict[str, Any]:
    answer: dict[str, Any] = (await user.post("/api/user/amount", json=body)).json()
    return answer


async def order_row(harness: AppHarness, trade_no: str) -> TopUp:
    async with harness.runtime.db.session() as session:
        row = await session.scalar(select(TopUp).where(TopUp.trade_no == trade_no))
        assert row is not None
        return row


async def quota_of(harness: AppHarness, user_id: int) -> int:
    async with harness.runtime.db.session() as session:
        return int(await session.scalar(select(User.quota).where(User.id == user_id)) or 0)


async def topup_logs(harness: AppHarness) -> list[Log]:
    async with harness.runtime.db.log_session() as session:
        return list((await session.scalars(select(Log).where(Log.type == LOG_TOPUP).order_by(Log.id))).all())


async def snapshot(harness: AppHarness) -> list[tuple[Any, ...]]:
    """Every order as stored, every balance and the number of log rows: "nothing changed"."""
    async with harness.runtime.db.session() as session:
        orders = await session.execute(select(TopUp.__table__).order_by(TopUp.id))
        quotas = await session.execute(select(User.id, User.quota).order_by(User.id))
        rows = [*map(tuple, orders.all()), *map(tuple, quotas.all())]
    async with harness.runtime.db.log_session() as session:
        rows.append((await session.scalar(select(func.count()).select_from(Log)),))
    return rows


# ----- options and info ------------------------------------------------------------------------


async def test_options_info_and_the_hidden_key(harness: AppHarness, as_root: As, as_user: As) -> None:
    info = (await as_user.get("/api/user/topup/info")).json()
    assert info["success"] and info["data"] == {
        "enable_online_topup": False,
        "min_topup": 1,
        "price": 7.3,
        "topup_group_ratio": {"default": 1, "vip": 1, "svip": 1},
        "amount_options": [10, 20, 50, 100, 200, 500],
    }
    values = {
        "PayAddress": GATEWAY + "/",
        "EpayId": PID,
        "EpayKey": MERCHANT_KEY,
        "CustomCallbackAddress": "https://callback.example.com",
        "TopupGroupRatio": '{"default": 1, "vip": 0.8}',
        "payment_setting.amount_options": "[5, 50]",
    }
    for key, value in values.items():
        answer = (await as_root.put("/api/option/", json={"key": key, "value": value})).json()
        assert answer["success"], (key, answer)
    listed = {o["key"]: o["value"] for o in (await as_root.get("/api/option/")).json()["data"]}
    assert listed["PayAddress"] == GATEWAY + "/" and listed["EpayId"] == PID
    assert listed["CustomCallbackAddress"] == "https://callback.example.com"
    assert "EpayKey" not in listed and MERCHANT_KEY not in str(listed)
    info = (await as_user.get("/api/user/topup/info")).json()["data"]
    assert info["enable_online_topup"] is True
    assert info["topup_group_ratio"] == {"default": 1, "vip": 0.8} and info["amount_options"] == [5, 50]

    bad = [
        ("TopupGroupRatio", "[1]"),
        ("TopupGroupRatio", '{"vip": -1}'),
        ("TopupGroupRatio", '{"vip": "cheap"}'),
        ("TopupGroupRatio", "{not json"),
        ("PayAddress", "ftp://pay.example.com"),
        ("CustomCallbackAddress", "callback.example.com"),
        ("payment_setting.amount_options", "[0, 10]"),
        ("payment_setting.amount_options", '["10"]'),
    ]
    for key, value in bad:
        answer = (await as_root.put("/api/option/", json={"key": key, "value": value})).json()
        assert answer["success"] is False and answer["message"], (key, value)
    assert (await as_user.get("/api/user/topup/info")).json()["data"] == info
    refused = await as_user.put("/api/option/", json={"key": "EpayKey", "value": "stolen"})
    assert refused.status_code == 403
    assert harness.runtime.options.get(topups.epay.EPAY_KEY) == MERCHANT_KEY


# ----- quoting -----------------------------------------------------------------------------------


async def test_amount_quote(harness: AppHarness, as_user: As) -> None:
    assert await quote(as_user, {"amount": 10, "top_up_code": ""}) == {"message": "success", "data": "73.00"}
    assert (await quote(as_user, {"amount": 3}))["data"] == "21.90"
    vip = await make_user(harness, "vera", ROLE_COMMON, group="vip")
    await harness.runtime.options.save("TopupGroupRatio", '{"default": 1, "vip": 0.5}')
    await harness.runtime.options.save("Price", "7")
    assert (await quote(vip, {"amount": 3}))["data"] == "10.50"
    assert (await quote(as_user, {"amount": 3}))["data"] == "21.00"
    await harness.runtime.options.save("MinTopUp", "5")
    assert await quote(as_user, {"amount": 4}) == {"message": "error", "data": "the minimum top-up is 5"}
    # Quota shown instead of money: the amount is quota, priced per QuotaPerUnit.
    await harness.runtime.options.save("DisplayInCurrencyEnabled", "false")
    assert (await quote(as_user, {"amount": 5_000_000}))["data"] == "70.00"
    assert (await quote(as_user, {"amount": 2_000_000}))["data"] == "the minimum top-up is 2500000"

    for body in (
        {"amount": "10"},
        {"amount": 10.5},
        {"amount": True},
        {},
        {"amount": 0},
        {"amount": -3},
        {"amount": 10**30},
        {"amount": 5_000_000, "top_up_code": 7},
        [10],
    ):
        answer = await quote(as_user, body)
        assert answer["message"] == "error" and answer["data"], body
        assert "success" not in answer
    raw = await as_user.post("/api/user/amount", content=b"{not json")
    assert raw.json()["message"] == "error"


# ----- opening an order ----------------------------------------------------------------------------


async def test_pay_opens_an_order_with_a_signed_form(harness: AppHarness, as_user: As) -> None:
    before = await snapshot(harness)
    refused = await pay(as_user)
    assert refused["message"] == "error" and "not available" in refused["data"]
    assert await snapshot(harness) == before

    await configure(harness, PayAddress=GATEWAY + "/")
    gateway = FakeEpay(harness.client)
    started = int(time.time())
    answer = await pay(as_user, 10, "zfb")
    assert answer["message"] == "success" and answer["url"] == f"{GATEWAY}/submit.php"
    form = answer["data"]
    assert gateway.accepts(form)
    trade_no = form["out_trade_no"]
    assert (
        trade_no.startswith(f"USR{as_user.user_id}NO")
        and len(trade_no) == len(f"USR{as_user.user_id}NO") + 16
    )
    assert trade_no[-10:].isdigit() and int(trade_no[-10:]) >= started and trade_no[-16:-10].isalnum()
    assert form | {"sign": "", "out_trade_no": ""} == {
        "pid": PID,
        "type": "alipay",
        "out_trade_no": "",
        "notify_url": f"{SITE}/api/user/epay/notify",
        "return_url": f"{SITE}/log",
        "name": "TUC10",
        "money": "73.00",
        "device": "pc",
        "sign": "",
        "sign_type": "MD5",
    }
    row = await order_row(harness, trade_no)
    assert (row.user_id, row.status, row.amount, row.money, row.quota) == (
        as_user.user_id,
        "pending",
        10,
        73,
        5_000_000,
    )
    assert (row.payment_method, row.paid_time) == ("alipay", 0) and row.created_time >= started

    assert (await open_order(as_user, 1, "wx"))["type"] == "wxpay"
    await harness.runtime.options.save("CustomCallbackAddress", "https://hooks.example.com/")
    other = await open_order(as_user, 2, "qqpay")
    assert (
        other["type"] == "qqpay" and other["notify_url"] == "https://hooks.example.com/api/user/epay/notify"
    )
    assert other["return_url"] == f"{SITE}/log" and gateway.accepts(other)
    await harness.runtime.options.save("DisplayInCurrencyEnabled", "false")
    quota_form = await open_order(as_user, 1_000_000)
    row = await order_row(harness, quota_form["out_trade_no"])
    assert (row.amount, row.money, row.quota, quota_form["money"]) == (2, 14.6, 1_000_000, "14.60")

    before = await snapshot(harness)
    for body in (
        {"amount": 10},
        {"amount": 10, "payment_method": ""},
        {"amount": 10, "payment_method": "ali pay"},
        {"amount": 10, "payment_method": "x" * 300},
        {"amount": 10, "payment_method": 3},
        {"amount": "10", "payment_method": "alipay"},
        {"amount": 0, "payment_method": "alipay"},
        {"amount": 10**20, "payment_method": "alipay"},
        {"payment_method": "alipay"},
        "alipay",
    ):
        answer = (await as_user.post("/api/user/pay", json=body)).json()
        assert answer["message"] == "error" and isinstance(answer["data"], str) and answer["data"], body
    assert await snapshot(harness) == before
    unauthenticated = await harness.client.post(
        "/api/user/pay", json={"amount": 10, "payment_method": "alipay"}
    )
    assert unauthenticated.status_code == 401
    assert await snapshot(harness) == before


# ----- the gateway's notification --------------------------------------------------------------------


async def test_a_paid_order_is_credited_exactly_once(harness: AppHarness, as_user: As) -> None:
    await configure(harness)
    gateway = FakeEpay(harness.client)
    form = await open_order(as_user, 10)
    start = await quota_of(harness, as_user.user_id)
    paid = gateway.notification(form)
    for _ in range(5):
        assert await gateway.notify(form, paid) == "success"
    answers = await asyncio.gather(*(gateway.notify(form, paid) for _ in range(10)))
    assert answers == ["success"] * 10
    assert await quota_of(harness, as_user.user_id) == start + 5_000_000
    logs = await topup_logs(harness)
    assert len(logs) == 1
    log = logs[0]
    assert (log.user_id, log.username, log.quota) == (as_user.user_id, as_user.username, 5_000_000)
    assert log.content == f"online top-up of $10.00 (order {form['out_trade_no']})"
    row = await order_row(harness, form["out_trade_no"])
    assert row.status == "success" and row.paid_time >= row.created_time
    self_view = (await as_user.get("/api/user/self")).json()["data"]
    assert self_view["quota"] == start + 5_000_000

    # The POST form variant, with concurrent duplicates from the start.
    second = await open_order(as_user, 2, "wxpay")
    paid = gateway.notification(second)
    answers = await asyncio.gather(*(gateway.notify(second, paid, post=True) for _ in range(10)))
    assert answers == ["success"] * 10
    assert await quota_of(harness, as_user.user_id) == start + 6_000_000
    assert len(await topup_logs(harness)) == 2


async def test_forged_or_mismatched_notifications_change_nothing(harness: AppHarness, as_user: As) -> None:
    await configure(harness)
    gateway = FakeEpay(harness.client)
    form = await open_order(as_user, 10)
    before = await snapshot(harness)
    forger = FakeEpay(harness.client, key="guessed-key")
    tampered = gateway.notification(form) | {"money": "0.01"}
    unsigned = {k: v for k, v in gateway.notification(form).items() if k != "sign"}
    unknown = dict(form, out_trade_no=f"USR{as_user.user_id}NOabcdef0000000000")
    cases = [
        forger.notification(form),  # signed with the wrong key
        tampered,  # changed after signing
        unsigned,
        gateway.notification(form) | {"sign": "0" * 32},
        gateway.notification(form, money="7.30"),  # signed, but not what the order costs
        gateway.notification(form, money="abc"),
        gateway.notification(form, pid="2002"),  # another merchant's notification
        gateway.notification(unknown),
        gateway.notification(form, out_trade_no="x" * 300),
        {},
    ]
    for params in cases:
        assert await gateway.notify(form, params) == "fail", params
        assert await gateway.notify(form, params, post=True) == "fail", params
    assert await snapshot(harness) == before
    oversize = await harness.client.post("/api/user/epay/notify", content=b"a=" + b"x" * 70_000)
    assert oversize.text == "fail"
    await harness.runtime.options.save("EpayKey", "")  # gateway not configured: nothing is trusted
    assert await gateway.notify(form, gateway.notification(form)) == "fail"
    assert await snapshot(harness) == before


async def test_failed_payment_marks_a_pending_order_failed(harness: AppHarness, as_user: As) -> None:
    await configure(harness)
    gateway = FakeEpay(harness.client)
    form = await open_order(as_user, 10)
    start = await quota_of(harness, as_user.user_id)
    assert await gateway.notify(form, gateway.notification(form, trade_status="TRADE_CLOSED")) == "success"
    row = await order_row(harness, form["out_trade_no"])
    assert (row.status, row.paid_time) == ("failed", 0)
    assert await quota_of(harness, as_user.user_id) == start and await topup_logs(harness) == []
    # The gateway confirming the payment later still credits it, once.
    assert await gateway.notify(form, gateway.notification(form)) == "success"
    assert (await order_row(harness, form["out_trade_no"])).status == "success"
    assert await quota_of(harness, as_user.user_id) == start + 5_000_000
    # A late "not paid" never takes a paid order back.
    assert await gateway.notify(form, gateway.notification(form, trade_status="WAIT_BUYER_PAY")) == "success"
    assert (await order_row(harness, form["out_trade_no"])).status == "success"
    assert await quota_of(harness, as_user.user_id) == start + 5_000_000
    unknown = dict(form, out_trade_no="USR1NOnothere0000000000")
    assert await gateway.notify(form, gateway.notification(unknown, trade_status="TRADE_CLOSED")) == "fail"


# ----- administrators ----------------------------------------------------------------------------------


async def test_manual_completion_by_an_admin(harness: AppHarness, as_admin: As, as_user: As) -> None:
    await configure(harness)
    gateway = FakeEpay(harness.client)
    form = await open_order(as_user, 20)
    trade_no = form["out_trade_no"]
    start = await quota_of(harness, as_user.user_id)
    before = await snapshot(harness)
    for body in ({}, {"trade_no": 5}, {"trade_no": ""}, {"trade_no": "   "}, {"trade_no": "x" * 300}):
        answer = (await as_admin.post("/api/user/topup/complete", json=body)).json()
        assert answer["success"] is False and answer["message"], body
    missing = await as_admin.post("/api/user/topup/complete", json={"trade_no": "USR9NOnothere0000000000"})
    assert missing.status_code == 404 and missing.json()["success"] is False
    forbidden = await as_user.post("/api/user/topup/complete", json={"trade_no": trade_no})
    assert forbidden.status_code == 403
    assert await snapshot(harness) == before

    done = (await as_admin.post("/api/user/topup/complete", json={"trade_no": trade_no})).json()
    assert done["success"] is True
    assert await quota_of(harness, as_user.user_id) == start + 10_000_000
    again = (await as_admin.post("/api/user/topup/complete", json={"trade_no": trade_no})).json()
    assert again["success"] is True and "already" in again["message"]
    assert await gateway.notify(form, gateway.notification(form)) == "success"  # the late notification
    assert await quota_of(harness, as_user.user_id) == start + 10_000_000
    logs = await topup_logs(harness)
    assert len(logs) == 1 and logs[0].content.endswith(f"(order {trade_no}), completed manually by admin")
    assert (logs[0].user_id, logs[0].quota) == (as_user.user_id, 10_000_000)
    assert (await order_row(harness, trade_no)).status == "success"


async def test_order_lists(harness: AppHarness, as_admin: As, as_user: As) -> None:
    await configure(harness)
    bob = await make_user(harness, "bob", ROLE_COMMON)
    mine = [await open_order(as_user, amount) for amount in (1, 2, 3)]
    theirs = await open_order(bob, 4)
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(
            update(TopUp).where(TopUp.trade_no == mine[0]["out_trade_no"]).values(status="success")
        )

    page = (await as_user.get("/api/user/topup/self", params={"p": 1, "page_size": 2})).json()["data"]
    assert (page["total"], page["page"], page["page_size"]) == (3, 1, 2)
    assert [o["trade_no"] for o in page["items"]] == [mine[2]["out_trade_no"], mine[1]["out_trade_no"]]
    item = page["items"][0]
    assert item["user_id"] == as_user.user_id and item["amount"] == 3 and item["money"] == 21.9
    assert (item["quota"], item["status"], item["payment_method"], item["complete_time"]) == (
        1_500_000,
        "pending",
        "alipay",
        0,
    )
    assert item["create_time"] > 0 and "username" not in item
    rest = (await as_user.get("/api/user/topup/self", params={"p": 2, "page_size": 2})).json()["data"]
    assert [o["status"] for o in rest["items"]] == ["success"]
    found = (
        await as_user.get("/api/user/topup/self", params={"keyword": mine[1]["out_trade_no"][-16:]})
    ).json()
    assert [o["trade_no"] for o in found["data"]["items"]] == [mine[1]["out_trade_no"]]
    foreign = (await as_user.get("/api/user/topup/self", params={"keyword": theirs["out_trade_no"]})).json()
    assert foreign["data"]["total"] == 0
    wildcard = (await as_user.get("/api/user/topup/self", params={"keyword": "%"})).json()
    assert wildcard["data"]["total"] == 0

    everything = (await as_admin.get("/api/user/topup")).json()["data"]
    assert everything["total"] == 4 and everything["items"][0]["trade_no"] == theirs["out_trade_no"]
    assert everything["items"][0]["username"] == "bob"
    by_name = (await as_admin.get("/api/user/topup", params={"keyword": "bob"})).json()["data"]
    assert [o["trade_no"] for o in by_name["items"]] == [theirs["out_trade_no"]]
    by_trade = (await as_admin.get("/api/user/topup", params={"keyword": mine[0]["out_trade_no"]})).json()[
        "data"
    ]
    assert by_trade["total"] == 1 and by_trade["items"][0]["username"] == as_user.username
    assert (await as_user.get("/api/user/topup")).status_code == 403
    assert (await harness.client.get("/api/user/topup/self")).status_code == 401
