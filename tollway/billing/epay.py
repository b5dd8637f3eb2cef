"""EPay (易支付), the payment gateway new-api uses for online top-ups: its options and its signature.

The de-facto standard "彩虹易支付" scheme signs a request or a notification with MD5: take every
parameter except ``sign`` and ``sign_type`` and those with an empty value, sort them by name, join
them as ``k1=v1&k2=v2…`` (raw values, not URL-encoded), append the merchant key and hash; the hex
digest in lower case is ``sign``. The gateway signs its notifications the same way, so verifying
one is recomputing the digest with our copy of the key and comparing in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway.options import REGISTRY, OptionError, Options, OptionSpec

SIGN_TYPE = "MD5"
TRADE_SUCCESS = "TRADE_SUCCESS"
SUBMIT_PATH = "/submit.php"
DEVICE_PC = "pc"
MAX_AMOUNT_OPTIONS = 100
_UNSIGNED = ("sign", "sign_type")


def _http_url(value: str) -> None:
    text = value.strip()
    if text and (not text.startswith(("http://", "https://")) or any(c.isspace() for c in text)):
        raise OptionError("must be an http:// or https:// address")


def _ratios(value: dict[str, Any]) -> None:
    for group, ratio in value.items():
        if not group:
            raise OptionError("group names must not be empty")
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
            raise OptionError(f"the ratio of group {group} must be a number")
        if ratio < 0:
            raise OptionError(f"the ratio of group {group} must not be negative")


def _amount_options(value: list[Any]) -> None:
    if len(value) > MAX_AMOUNT_OPTIONS:
        raise OptionError(f"at most {MAX_AMOUNT_OPTIONS} amounts")
    for amount in value:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise OptionError("amounts must be positive integers")


PAY_ADDRESS = REGISTRY.declare("PayAddress", "", _http_url)
EPAY_ID = REGISTRY.declare("EpayId", "")
EPAY_KEY = REGISTRY.declare("EpayKey", "")  # ends in Key: never listed by GET /api/option/
CUSTOM_CALLBACK_ADDRESS = REGISTRY.declare("CustomCallbackAddress", "", _http_url)
TOPUP_GROUP_RATIO: OptionSpec[dict[str, Any]] = REGISTRY.declare(
    "TopupGroupRatio", {"default": 1, "vip": 1, "svip": 1}, _ratios
)
AMOUNT_OPTIONS: OptionSpec[list[Any]] = REGISTRY.declare(
    "payment_setting.amount_options", [10, 20, 50, 100, 200, 500], _amount_options
)


@dataclass(frozen=True)
class Merchant:
    """The merchant account at one EPay gateway."""

    gateway: str  # the gateway's base address, without a trailing slash
    pid: str
    key: str

    @property
    def submit_url(self) -> str:
        return self.gateway + SUBMIT_PATH


def merchant(options: Options) -> Merchant | None:
    """The configured merchant, or None while any of PayAddress, EpayId, EpayKey is empty."""
    gateway = options.get(PAY_ADDRESS).strip().rstrip("/")
    pid = options.get(EPAY_ID).strip()
    key = options.get(EPAY_KEY).strip()
    if not (gateway and pid and key):
        return None
    return Merchant(gateway=gateway, pid=pid, key=key)


def online_topup_enabled(options: Options) -> bool:
    """``enable_online_topup`` of ``/api/status`` and ``/api/user/topup/info``."""
    return merchant(options) is not None


def signing_string(params: Mapping[str, str]) -> str:
    """What is hashed, before the key: sorted non-empty parameters, ``sign``/``sign_type`` left out."""
    names = sorted(name for name, value in params.items() if name not in _UNSIGNED and value != "")
    return "&".join(f"{name}={params[name]}" for name in names)


def sign(params: Mapping[str, str], key: str) -> str:
    """The lower-case MD5 hex signature of ``params`` under the merchant ``key``."""
    payload = (signing_string(params) + key).encode("utf-8")
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def verify(params: Mapping[str, str], key: str) -> bool:
    """True when ``params["sign"]`` is the signature of the other parameters under ``key``."""
    given = params.get("sign", "")
    if not given or not key:
        return False
    return hmac.compare_digest(sign(params, key).encode("utf-8"), given.lower().encode("utf-8"))


def purchase_form(
    account: Merchant,
    *,
    pay_type: str,
    trade_no: str,
    name: str,
    money: str,
    notify_url: str,
    return_url: str,
) -> dict[str, str]:
    """The signed form the browser posts to ``account.submit_url`` to pay an order."""
    form = {
        "pid": account.pid,
        "type": pay_type,
        "out_trade_no": trade_no,
        "notify_url": notify_url,
        "return_url": return_url,
        "name": name,
        "money": money,
        "device": DEVICE_PC,
    }
    form["sign"] = sign(form, account.key)
    form["sign_type"] = SIGN_TYPE
    return form
