"""The one error tree. Each error knows its HTTP status and renders in the caller's dialect.

Relay routes answer in OpenAI's shape (Anthropic's on ``/v1/messages``); management routes answer
in the ``{success, message}`` envelope. Messages never carry secrets: callers mask upstream text
before raising.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """Bad configuration found at start: reported as one line, never as a traceback."""


class TollwayError(Exception):
    """An error a client sees. Subclasses fix the status, type and code; instances may override them."""

    status: int = 500
    type: str = "new_api_error"
    code: str | int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param

    # ----- renderers -----------------------------------------------------------------------

    def openai_body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": with_request_id(self.message, request_id), "type": self.type}
        error["param"] = self.param or ""
        error["code"] = self.code
        return {"error": error}

    def anthropic_body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.type, "message": with_request_id(self.message, request_id)},
        }

    def envelope_body(self) -> dict[str, Any]:
        return {"success": False, "message": self.message}


def with_request_id(message: str, request_id: str) -> str:
    """new-api appends the request id to every relay error message, and clients grep for it."""
    return f"{message} (request id: {request_id})" if request_id else message


class InvalidRequest(TollwayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(TollwayError):
    status = 401


class Forbidden(TollwayError):
    status = 403


class NotFound(TollwayError):
    status = 404
    type = "invalid_request_error"


class PayloadTooLarge(TollwayError):
    status = 413
    type = "invalid_request_error"
    code = "request_body_too_large"


class RateLimited(TollwayError):
    status = 429

    def __init__(self, message: str = "Too many requests", *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiNotImplemented(TollwayError):
    status = 501
    code = "api_not_implemented"

    def __init__(self, message: str = "API not implemented") -> None:
        super().__init__(message)


class ServiceUnavailable(TollwayError):
    status = 503


class UpstreamError(TollwayError):
    """An upstream answered with an error, or could not be reached. Its status is the upstream's."""

    status = 502
    type = "upstream_error"


class InternalError(TollwayError):
    status = 500


class BusinessError(TollwayError):
    """A management request that was understood but refused: HTTP 200 with ``success: false``,
    as new-api's console and scripts expect."""

    status = 200
