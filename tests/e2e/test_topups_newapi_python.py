"""The third-party `newapi-python` client, unchanged, paying online against a running Tollway: read
the top-up settings, get a quote, open an EPay order, and (once the fake gateway has notified
Tollway of the payment) see the order paid and the balance credited."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

import newapi
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.api.test_topups import GATEWAY, MERCHANT_KEY, PID, FakeEpay
from tests.e2e.conftest import Live
from tollway.api import topups
from tollway.auth.passwords import hash_password
from tollway.db.models import User

pytestmark = pytest.mark.db
PASSWORD = "newapi-python-pass"


async def test_newapi_python_pays_online(live: Live) -> None:
    api = cast(FastAPI, live.app.api)
    if not any(getattr(route, "path", "") == "/api/user/epay/notify" for route in api.routes):
        api.include_router(topups.router, prefix="/api")
    for name, value in {"PayAddress": GATEWAY, "EpayId": PID, "EpayKey": MERCHANT_KEY}.items():
        await live.set_option(name, value)
    async with live.runtime.db.session() as session, session.begin():
        session.add(User(username="payer", password=await hash_password(PASSWORD), quota=1000))

    def open_order() -> dict[str, Any]:
        with newapi.NewAPI(live.base_url, impersonate=None) as client:
            client.login("payer", PASSWORD)
            info = client.topup.info()
            link = client.payment.epay_pay(10, "alipay")
            return {
                "enabled": info.get("enable_online_topup"),
                "options": info.get("amount_options"),
                "quote": client.payment.epay_amount(10),
                "url": link.get("url"),
                "form": link.get("params"),
            }

    opened = await asyncio.to_thread(open_order)
    assert opened["enabled"] is True and opened["options"] == [10, 20, 50, 100, 200, 500]
    assert opened["quote"] == Decimal("73.00")
    assert opened["url"] == f"{GATEWAY}/submit.php"
    form = dict(opened["form"])
    gateway = FakeEpay(live.client)
    assert gateway.accepts(form) and form["money"] == "73.00"
    assert await gateway.notify(form, gateway.notification(form)) == "success"

    def orders() -> list[dict[str, Any]]:
        with newapi.NewAPI(live.base_url, impersonate=None) as client:
            client.login("payer", PASSWORD)
            return [dict(order) for order in client.topup.list()]

    listed = await asyncio.to_thread(orders)
    assert [(o["trade_no"], o["status"], o["quota"]) for o in listed] == [
        (form["out_trade_no"], "success", 5_000_000)
    ]
    async with live.runtime.db.session() as session:
        assert await session.scalar(select(User.quota).where(User.username == "payer")) == 5_001_000
