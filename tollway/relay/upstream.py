"""The one pooled HTTP client a process uses to talk to upstreams (:mod:`tollway.relay.http1`: a
lean HTTP/1.1 client on httptools, measured well below aiohttp's CPU per request). Created in the
lifespan, closed at shutdown."""

from __future__ import annotations

from tollway.providers.base import UpstreamRequest
from tollway.relay.http1 import CONNECT_TIMEOUT, HeadersTimeout, Http1Client
from tollway.relay.http1_body import Response

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
        self._client: Http1Client | None = None

    async def start(self) -> None:
        # read_timeout bounds every wait for upstream bytes: a silent stream ends after it.
        # No redirects, no User-Agent / Accept-Encoding added; gzip/deflate answers are decoded.
        self._client = Http1Client(connect_timeout=CONNECT_TIMEOUT, read_timeout=self._streaming_timeout)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def send(self, request: UpstreamRequest) -> Response:
        """Send and wait for the response headers (bounded by ``RELAY_TIMEOUT`` when set).
        The caller reads the body and must release the response."""
        assert self._client is not None, "UpstreamClient used before start()"
        try:
            return await self._client.request(
                request.method,
                request.url,
                request.headers,
                request.body,
                headers_timeout=self._relay_timeout,
            )
        except HeadersTimeout:
            raise UpstreamTimeout from None
