"""What a provider adapter is: pure translation between Tollway's relay and one upstream dialect.

An adapter never performs I/O. The relay engine gives it the client's request and the chosen
channel and key; the adapter returns the HTTP request to send. For the answer, it extracts the
usage and turns an upstream error into an :class:`UpstreamFailure`. Adapters are tested against
recorded payloads, without a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tollway.relay.channel import ChannelSnapshot


@dataclass
class RelayRequest:
    """The client's request after authentication and validation.

    ``body`` is the raw bytes the client sent; ``json`` is its parsed form for JSON routes (None for
    multipart or bodiless routes). Adapters forward ``body`` untouched unless they must change it
    (model mapping, parameter overrides, ``stream_options``), and then re-encode ``json``.
    """

    method: str
    path: str  # e.g. "/v1/chat/completions", without the query string
    query: str  # raw query string, without "?"
    body: bytes
    json: dict[str, Any] | None
    content_type: str
    model: str  # the model the client asked for (billing and logs use this name)
    stream: bool = False
    client_wants_usage: bool = False  # stream_options.include_usage set by the client
    ask_upstream_usage: bool = False  # set stream_options.include_usage upstream (FORCE_STREAM_OPTION)
    headers: dict[str, str] = field(default_factory=dict)  # selected client headers to forward


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UpstreamFailure:
    """An upstream error in OpenAI's terms, ready to classify (retry? disable?) and to show."""

    status: int
    message: str
    type: str = "upstream_error"
    code: str | int | None = None
    param: str | None = None
    body: dict[str, Any] | None = None  # the upstream's own OpenAI error object, when it sent one


class Provider(Protocol):
    """One upstream dialect. Implementations are stateless and shared by every request."""

    def build_request(self, channel: ChannelSnapshot, key: str, request: RelayRequest) -> UpstreamRequest:
        """The HTTP request to send for ``request`` through ``channel`` with ``key``."""
        ...

    def usage_from_response(self, body: dict[str, Any]) -> Usage | None:
        """Usage of a non-stream JSON answer, or None when the upstream reported none."""
        ...

    def usage_from_event(self, event: dict[str, Any]) -> Usage | None:
        """Usage carried by one stream event (OpenAI sends it in the last chunk), or None."""
        ...

    def parse_error(self, status: int, body: bytes) -> UpstreamFailure:
        """Turn a non-2xx answer into an :class:`UpstreamFailure`."""
        ...
