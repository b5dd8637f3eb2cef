"""The relay's HTTP surface: the route table, and the translation between Starlette and the engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tollway.db.models import Token, User
from tollway.errors import ApiNotImplemented, NotFound, TollwayError
from tollway.http import JSONResponse
from tollway.options import DISPLAY_TOKEN_STAT_ENABLED
from tollway.relay import catalog, requests
from tollway.relay.auth import Caller, authenticate
from tollway.relay.engine import RelayEngine
from tollway.relay.incoming import Incoming, Reply, StreamReply
from tollway.relay.requests import RouteSpec
from tollway.relay.service import RelayService

Endpoint = Callable[[Request], Awaitable[Response]]

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
    ("/v1/edits", ("POST",)),
)

RELAYED: tuple[tuple[str, RouteSpec], ...] = (
    ("/v1/chat/completions", requests.CHAT),
    ("/v1/completions", requests.COMPLETIONS),
    ("/v1/embeddings", requests.EMBEDDINGS),
    ("/v1/engines/{model}/embeddings", requests.EMBEDDINGS),
    ("/v1/moderations", requests.MODERATIONS),
    ("/v1/images/generations", requests.IMAGES),
    ("/v1/images/edits", requests.IMAGE_EDITS),
    ("/v1/audio/speech", requests.SPEECH),
    ("/v1/audio/transcriptions", requests.TRANSCRIPTIONS),
    ("/v1/audio/translations", requests.TRANSLATIONS),
    ("/v1/rerank", requests.RERANK),
    ("/v1/responses", requests.RESPONSES),
)


def request_id_of(request: Request) -> str:
    state = request.scope.get("state") or {}
    return str(state.get("request_id", ""))


def relay_error(request: Request, error: TollwayError) -> JSONResponse:
    return JSONResponse(error.openai_body(request_id_of(request)), status_code=error.status)


async def incoming_of(request: Request) -> Incoming:
    scope = request.scope
    client = scope.get("client")
    return Incoming(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
        body=await request.body(),
        client_ip=client[0] if client else "",
        request_id=request_id_of(request),
    )


class RelayStreamingResponse(StreamingResponse):
    """Streams a :class:`StreamReply` and always closes it, so the request is settled and logged
    even when the client disconnects before the first chunk."""

    def __init__(self, reply: StreamReply) -> None:
        super().__init__(reply.chunks, status_code=reply.status, headers=dict(reply.headers))
        self._reply = reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._reply.close()


def to_response(result: Reply | StreamReply) -> Response:
    if isinstance(result, StreamReply):
        return RelayStreamingResponse(result)
    return Response(result.body, status_code=result.status, headers=dict(result.headers))


def _relay_endpoint(service: RelayService, spec: RouteSpec) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            incoming = await incoming_of(request)
            model = request.path_params.get("model")
            return to_response(await service.engine.relay(incoming, spec, path_model=model))
        except TollwayError as error:
            return relay_error(request, error)

    return endpoint


async def _caller(service: RelayService, request: Request) -> tuple[RelayEngine, Caller]:
    engine = service.engine
    await engine.sync()
    incoming = await incoming_of(request)
    caller = await authenticate(incoming, engine.accounts, engine.balances, engine.options, engine.prices)
    return engine, caller


def _catalog_routes(service: RelayService) -> list[Route]:
    async def models(request: Request) -> Response:
        try:
            engine, caller = await _caller(service, request)
            return JSONResponse(catalog.list_models(caller, engine.channels))
        except TollwayError as error:
            return relay_error(request, error)

    async def model(request: Request) -> Response:
        try:
            engine, caller = await _caller(service, request)
            return JSONResponse(catalog.retrieve_model(caller, engine.channels, request.path_params["model"]))
        except TollwayError as error:
            return relay_error(request, error)

    async def subscription(request: Request) -> Response:
        try:
            engine, caller = await _caller(service, request)
            return JSONResponse(catalog.billing_subscription(caller, engine.balances, engine.options))
        except TollwayError as error:
            return relay_error(request, error)

    async def usage(request: Request) -> Response:
        try:
            engine, caller = await _caller(service, request)
            async with service.db.session() as session:
                if engine.options.get(DISPLAY_TOKEN_STAT_ENABLED):
                    used = await session.scalar(select(Token.used_quota).where(Token.id == caller.token.id))
                else:
                    used = await session.scalar(select(User.used_quota).where(User.id == caller.user.id))
            return JSONResponse(catalog.billing_usage(caller, int(used or 0), engine.options))
        except TollwayError as error:
            return relay_error(request, error)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
    ]
    for prefix in ("", "/v1"):
        routes.append(Route(f"{prefix}/dashboard/billing/subscription", subscription, methods=["GET"]))
        routes.append(Route(f"{prefix}/dashboard/billing/usage", usage, methods=["GET"]))
    return routes


async def not_implemented(request: Request) -> Response:
    return relay_error(request, ApiNotImplemented())


async def not_found(request: Request) -> Response:
    return relay_error(request, NotFound(f"Invalid URL ({request.method} {request.url.path})"))


def build_relay_routes(service: RelayService) -> list[Route]:
    """The relay's routes, with full paths (they are not mounted under a prefix)."""
    routes = [Route(path, not_implemented, methods=list(methods)) for path, methods in NOT_IMPLEMENTED]
    routes += [Route(path, _relay_endpoint(service, spec), methods=["POST"]) for path, spec in RELAYED]
    routes += _catalog_routes(service)
    return routes
