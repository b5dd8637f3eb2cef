"""The relay's HTTP surface (``/v1``…): route table, and OpenAI-style 404 / 501 answers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollway.errors import ApiNotImplemented, NotFound, TollwayError
from tollway.http import JSONResponse

# Routes new-api answers with 501: accepted paths that no upstream contract backs yet.
NOT_IMPLEMENTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/v1/images/variations", ("POST",)),
    ("/v1/files", ("GET", "POST")),
    ("/v1/files/{file_id}", ("GET", "DELETE")),
    ("/v1/files/{file_id}/content", ("GET",)),
    ("/v1/fine-tunes", ("GET", "POST")),
    ("/v1/fine-tunes/{ft_id}", ("GET",)),
    ("/v1/fine-tunes/{ft_id}/cancel", ("POST",)),
    ("/v1/fine-tunes/{ft_id}/events", ("GET",)),
    ("/v1/models/{model}", ("DELETE",)),
)


def relay_error(request: Request, error: TollwayError) -> JSONResponse:
    request_id: str = request.scope.get("state", {}).get("request_id", "")
    return JSONResponse(error.openai_body(request_id), status_code=error.status)


async def not_implemented(request: Request) -> Response:
    return relay_error(request, ApiNotImplemented())


async def not_found(request: Request) -> Response:
    return relay_error(request, NotFound(f"Invalid URL ({request.method} {request.url.path})"))


def build_relay_routes() -> list[Route]:
    """The relay's routes, with full paths (they are not mounted under a prefix)."""
    return [Route(path, not_implemented, methods=list(methods)) for path, methods in NOT_IMPLEMENTED]
