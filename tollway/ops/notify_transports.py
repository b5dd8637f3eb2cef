"""The four ways a notification leaves Tollway: email, webhook, Bark and Gotify (new-api's formats).

A :class:`Message` has a ``kind`` (``quota_exceed``, ``channel_update``, …), a title, a content
that may hold ``{{value}}`` placeholders, and the values that fill them, in order.

* **email**: the content with its placeholders filled, as HTML (values that are links become
  links), through :class:`tollway.ops.mailer.Mailer` (options ``SMTP*``).
* **webhook**: ``POST <webhook_url>`` with ``Content-Type: application/json`` and the body
  ``{"type", "title", "content", "values", "timestamp"}`` (``values`` left out when empty;
  ``content`` keeps its placeholders, receivers fill them from ``values``, as new-api sends it;
  ``timestamp`` in Unix seconds). When the user set ``webhook_secret`` the request carries
  ``X-Webhook-Signature: <hex HMAC-SHA256 of the raw request body, keyed with the secret>``;
  a receiver recomputes it over the bytes it received (before parsing) and compares in constant
  time, e.g. in Python ``hmac.compare_digest(hmac.new(secret, body, "sha256").hexdigest(), sig)``.
* **bark**: ``GET <bark_url>`` where ``{{title}}`` and ``{{content}}`` in the URL are replaced by
  the URL-escaped title and filled content.
* **gotify**: ``POST <gotify_url>/message?token=<gotify_token>`` with
  ``{"title", "message", "priority"}`` (priority 0–10, else 5).

A 2xx answer is a delivery; redirects are not followed (a public URL must not bounce a request to
an internal one). Webhook, Bark and Gotify URLs are checked before each attempt and again when
connecting (:class:`GuardedResolver`, so DNS cannot be re-pointed between check and connect):
addresses that are not globally routable (private, loopback, link-local, …) are refused unless the
option ``NotificationAllowPrivateTargets`` is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import orjson

from tollway.ops.mailer import Mailer, MailerError

# aiohttp (with yarl, multidict, …: ~8 MB per worker) is imported only when a notice leaves by
# HTTP: by the functions below that use it at run time, and by Notifier for its session.
if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult
    from yarl import URL
else:
    AbstractResolver = object  # made a virtual subclass of aiohttp's when the first one is built

VALUE_PLACEHOLDER = "{{value}}"
SIGNATURE_HEADER = "X-Webhook-Signature"
USER_AGENT = "Tollway-Notify/1.0"
BARK_USER_AGENT = "OneAPI-Bark-Notify/1.0"  # new-api's; Bark servers may log or filter on it
DEFAULT_GOTIFY_PRIORITY = 5


class DeliveryError(Exception):
    """An attempt failed and may succeed later (timeout, connection error, 5xx, 429). The message
    names no secret."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help: the target is refused, malformed, or answered a definite 4xx."""


class TargetRefused(PermanentFailure):
    """The URL is not an http(s) URL or points at a non-public address."""


@dataclass(frozen=True)
class Message:
    kind: str
    title: str
    content: str
    values: tuple[str, ...] = ()

    def filled(self) -> str:
        """``content`` with each ``{{value}}`` replaced by the next value (extra ones stay)."""
        return _fill(self.content, self.values, str)


def _fill(template: str, values: Sequence[str], convert: Callable[[str], str]) -> str:
    pieces = template.split(VALUE_PLACEHOLDER)
    out = [convert(pieces[0])]
    for index, piece in enumerate(pieces[1:]):
        out.append(values[index] if index < len(values) else VALUE_PLACEHOLDER)
        out.append(convert(piece))
    return "".join(out)


def email_html(message: Message) -> str:
    """The email body: the escaped content, placeholders filled, http(s) values as links."""

    def render(value: str) -> str:
        escaped = html.escape(value)
        return f'<a href="{escaped}">{escaped}</a>' if value.startswith(("http://", "https://")) else escaped

    body = _fill(message.content, [render(v) for v in message.values], html.escape)
    return "<p>" + body.replace("\n", "<br>") + "</p>"


# ----- the private-address guard -------------------------------------------------------------


def is_public(address: str) -> bool:
    """Whether ``address`` is globally routable (IPv4-mapped IPv6 judged as the IPv4 inside)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not http(s) or whose host resolves to a non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("the URL must be an http:// or https:// URL with a host")
    if allow_private:
        return
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DeliveryError(f"cannot resolve the target's host: {exc}") from None
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(is_public(address) for address in addresses):
        raise TargetRefused(
            "the target resolves to a private or local address; an administrator may allow that "
            "with the option NotificationAllowPrivateTargets"
        )


class GuardedResolver(AbstractResolver):
    """The default resolver, refusing non-public answers unless ``allow_private()`` says yes.

    An ``aiohttp.abc.AbstractResolver`` (registered as one on first use, so that defining this
    class does not import aiohttp)."""

    def __init__(self, allow_private: Callable[[], bool]) -> None:
        from aiohttp.abc import AbstractResolver as _AbstractResolver
        from aiohttp.resolver import DefaultResolver

        _AbstractResolver.register(GuardedResolver)  # once; later calls find it registered
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private() and not all(is_public(result["host"]) for result in results):
            raise OSError(f"refusing to connect to {host}: it resolves to a private or local address")
        return results

    async def close(self) -> None:
        await self._inner.close()


# ----- transports ----------------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(message: Message, now: float | None = None) -> bytes:
    payload: dict[str, object] = {"type": message.kind, "title": message.title, "content": message.content}
    if message.values:
        payload["values"] = list(message.values)
    payload["timestamp"] = int(time.time() if now is None else now)
    return orjson.dumps(payload)


async def _request(http: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: object) -> None:
    """One HTTP attempt; raise unless the answer is 2xx."""
    import aiohttp

    try:
        async with http.request(method, url, allow_redirects=False, **kwargs) as response:  # type: ignore[arg-type]
            status = response.status
            await response.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise DeliveryError(f"cannot reach the target: {type(exc).__name__}: {exc}") from None
    if 200 <= status < 300:
        return
    if status >= 500 or status in (408, 425, 429):
        raise DeliveryError(f"the target answered HTTP {status}")
    raise PermanentFailure(f"the target answered HTTP {status}")


async def send_webhook(
    http: aiohttp.ClientSession, url: str, secret: str, message: Message, *, allow_private: bool
) -> None:
    await check_target(url, allow_private=allow_private)
    body = webhook_body(message)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    await _request(http, "POST", url, data=body, headers=headers)


def bark_url(template: str, message: Message) -> str:
    url = template.replace("{{title}}", quote(message.title, safe=""))
    return url.replace("{{content}}", quote(message.filled(), safe=""))


async def send_bark(http: aiohttp.ClientSession, url: str, message: Message, *, allow_private: bool) -> None:
    from yarl import URL

    final = bark_url(url, message)
    await check_target(final, allow_private=allow_private)
    # Sent exactly as built: re-quoting would undo the escapes of the substituted values.
    await _request(http, "GET", URL(final, encoded=True), headers={"User-Agent": BARK_USER_AGENT})


def gotify_priority(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10 else 5


async def send_gotify(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    priority: object,
    message: Message,
    *,
    allow_private: bool,
) -> None:
    final = url.rstrip("/") + "/message?token=" + quote(token, safe="")
    await check_target(final, allow_private=allow_private)
    body = orjson.dumps(
        {"title": message.title, "message": message.filled(), "priority": gotify_priority(priority)}
    )
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    await _request(http, "POST", final, data=body, headers=headers)


async def send_email(mailer: Mailer, to: str, message: Message) -> None:
    if not mailer.configured:
        raise PermanentFailure("email is not configured: set SMTPServer and SMTPFrom (or SMTPAccount)")
    try:
        await mailer.send(to, message.title, email_html(message))
    except MailerError as exc:
        raise DeliveryError(str(exc)) from None
