"""The HTTP API as a Starlette app over the router's core: OpenAI's /v1/chat/completions, /v1/responses and
/v1/models, and Anthropic's /v1/messages and /v1/messages/count_tokens. Anything else gets OpenAI's error shape too
(404, 405)."""
from __future__ import annotations

import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tierwise.serving import Rejected

from ..auth import KeyGate, api_key
from ..core import RouterCore
from .chat import ROUTE, ChatApi
from .endpoint import Bodies, Endpoint, peer
from .health import Health
from .messages import COUNT_TOKENS, MessagesApi
from .messages_request import parse_count
from .responses import ResponsesApi
from .errors import as_json, bad_request, error_body, error_headers, id_headers, internal_error, status_of
from .request import route_of

log = logging.getLogger("tierwise.router.http")


def build_app(core: RouterCore, gate: KeyGate | None, health: Health | None = None) -> Starlette:
    health = health or Health()
    created = int(time.time())
    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    names = core.cfg.http.model_names()
    messages, bodies = MessagesApi(), Bodies(core)

    def model(name: str) -> dict:
        # OpenAI's fields, and Anthropic's (type, display_name, created_at), so that either SDK reads the list.
        return {"id": name, "object": "model", "created": created, "owned_by": "tierwise", "type": "model",
                "display_name": name, "created_at": created_at}

    def admitted(request: Request) -> None:
        # Listing models and counting tokens cost nothing: the key (a bearer token, or x-api-key as Anthropic's SDKs
        # send it) is checked, not counted against its limits.
        if gate is not None:
            gate.admit(api_key(request.headers.items()), peer(request.scope), limited=False)

    async def models(request: Request) -> Response:
        try:
            admitted(request)
        except Rejected as err:
            return _error(err)
        listed = names.listed()
        return _json({"object": "list", "data": [model(name) for name in listed], "has_more": False,
                      "first_id": listed[0], "last_id": listed[-1]})

    async def one_model(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            admitted(request)
            route_of(name, names)
        except Rejected as err:
            return _error(err)
        return _json(model(name))

    async def count_tokens(request: Request) -> Response:
        with health.under_way():
            try:
                admitted(request)
                counted = parse_count(await health.unless_cut(bodies.read(request)), names)
                try:
                    tokens = core.count_tokens(counted.request)
                except Rejected as err:
                    raise counted.refused(err) from None
            except Rejected as err:
                return _json(messages.error(err), status_of(err), error_headers(err))
            except ClientDisconnect:  # gone while sending its body: nobody to answer, nothing gone wrong here
                return Response(status_code=400)
            except Exception:
                log.exception("unexpected error in %s", COUNT_TOKENS)
                return _json(messages.error(internal_error()), 500)
            return _json({"input_tokens": tokens})

    async def healthy(request: Request) -> Response:
        # No key: a load balancer's health check carries none.
        return _json({"status": "draining"}, 503) if health.draining else _json({"status": "serving"})

    async def not_found(request: Request, exc: HTTPException) -> Response:
        what = "method not allowed" if exc.status_code == 405 else "no such endpoint"
        body = error_body(bad_request(f"{what}: {request.method} {request.url.path}; the API serves POST {ROUTE}, "
                                      f"POST {ResponsesApi.route}, POST {MessagesApi.route} (and {COUNT_TOKENS}), "
                                      "GET /v1/models and GET /health"))
        body["error"]["code"] = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return _json(body, exc.status_code)

    routes = [Route(ROUTE, Endpoint(core, gate, ChatApi(), names, health), methods=["POST"]),
              Route(ResponsesApi.route, Endpoint(core, gate, ResponsesApi(), names, health), methods=["POST"]),
              Route(MessagesApi.route, Endpoint(core, gate, messages, names, health), methods=["POST"]),
              Route(COUNT_TOKENS, count_tokens, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", healthy, methods=["GET"]),
              Route("/v1/models/{name:path}", one_model, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.router.redirect_slashes = False  # OpenAI answers /v1/chat/completions/ with a 404, not a redirect
    return app


def _json(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # These calls make no span, so their id is a random one.
    return Response(as_json(body), status, (headers or {}) | id_headers(uuid.uuid4().hex),
                    media_type="application/json")


def _error(err: Rejected) -> Response:
    return _json(error_body(err), status_of(err), error_headers(err))
