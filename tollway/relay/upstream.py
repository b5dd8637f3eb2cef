"""The one pooled HTTP client a process uses to talk to upstreams (aiohttp: measured faster than
httpx under concurrency). Created in the lifespan, closed at shutdown."""

from __future__ import annotations

import asyncio

import aiohttp

from tollway.providers.base import UpstreamRequest

# Headers of an upstream answer that must not be copied to the client as they are.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "set-cookie",
        "x-oneapi-request-id",
    }
)


class UpstreamTimeout(Exception):
    """The upstream did not send its response headers within ``RELAY_TIMEOUT``."""


class UpstreamClient:
    def __init__(self, *, relay_timeout: float, streaming_timeout: float) -> None:
        self._relay_timeout = relay_timeout or None
        self._streaming_timeout = streaming_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # sock_read bounds every wait for upstream bytes: a silent stream ends after it.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._streaming_timeout),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        """Send and wait for the response headers (bounded by ``RELAY_TIMEOUT`` when set).
        The caller reads the body and must release the response."""
        assert self._session is not None, "UpstreamClient used before start()"
        call = self._session.request(
            request.method, request.url, headers=request.headers, data=request.body, allow_redirects=False
        )
        if self._relay_timeout is None:
            return await call
        try:
            async with asyncio.timeout(self._relay_timeout):
                return await call
        except TimeoutError:
            raise UpstreamTimeout from None
