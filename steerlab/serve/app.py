"""The ASGI app: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, the vector listing,
``/health`` and the playground, over one :class:`~steerlab.serve.engine.Engine`.

Handlers run on the event loop; the engine's worker thread hands each event to the request's asyncio queue.
Every refusal is a JSON error with a 4xx status; a client that goes away has its request cancelled; the engine
starts with the app and, at shutdown, finishes the requests it admitted.

Example::

    import uvicorn
    from steerlab import load_model
    from steerlab.serve.app import create_app
    from steerlab.serve.service import Service
    ...
    uvicorn.run(create_app(service), host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerlab.serve.engine import Chunk, Done, Event, Failed, Job, Overloaded, Ticket
from steerlab.serve.protocol import ChatRequest, CompletionRequest
from steerlab.serve.service import ApiError, Service

# How often a non-streaming handler checks whether its client is still there.
DISCONNECT_POLL_S = 0.25


def create_app(service: Service) -> FastAPI:
    """The app for ``service``; its engine starts with the app and drains when the app stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.engine.stop, True)

    app = FastAPI(title="steerlab serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=service.settings.limits.max_body_bytes)
    _install_errors(app)
    model_id = service.settings.model_id
    replica = uuid.uuid4().hex[:12]  # tells replicas apart behind a load balancer

    async def authorised(request: Request) -> None:
        key = service.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        running, waiting = service.engine.load()
        return {"status": "ok", "model": model_id, "replica": replica, "running": running, "waiting": waiting,
                "cancelled": service.engine.cancelled}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> str:
        return resources.files("steerlab.serve").joinpath("static/playground.html").read_text("utf-8")

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "steerlab"}]}

    @app.get("/v1/steering/vectors", dependencies=guarded)
    async def vectors() -> dict[str, Any]:
        return {"object": "list", "data": [entry.info() for entry in service.library.entries()]}

    @app.post("/v1/chat/completions", dependencies=guarded, response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Response:
        return await _respond(service, body, request, chat=True)

    @app.post("/v1/completions", dependencies=guarded, response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _respond(service, body, request, chat=False)

    return app


async def _respond(service: Service, body: ChatRequest | CompletionRequest, request: Request, *,
                   chat: bool) -> Response:
    job, applied = service.job(body)
    ticket, queue = _submit(service, job)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    shape = _Shape(ident, int(time.time()), service.settings.model_id, chat)
    timeout = service.settings.limits.timeout_s
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return EventSourceResponse(_stream(ticket, queue, shape, timeout, usage, body), ping=None)
    watcher = asyncio.create_task(_watch_disconnect(request, ticket, queue))
    try:
        text, done = [], None
        async for event in _events(ticket, queue, timeout):
            if isinstance(event, Chunk):
                text.append(event.text)
            else:
                done = event
    finally:
        watcher.cancel()
    assert done is not None
    return JSONResponse({**shape.whole("".join(text), done), "steering": applied, **_decision(body, done)})


def _submit(service: Service, job: Job) -> tuple[Ticket, asyncio.Queue[Event]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    try:
        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        ticket = service.engine.submit(job, sink)
    except Overloaded as exc:
        raise ApiError(429, f"server busy: {exc}; retry shortly", kind="rate_limit_error",
                       headers={"Retry-After": "1"}) from None
    return ticket, queue


async def _events(ticket: Ticket, queue: asyncio.Queue[Event], timeout: float) -> AsyncIterator[Chunk | Done]:
    """The ticket's events until it is done; a failure or the timeout raises ApiError (the ticket is cancelled)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise ApiError(504, f"the request took longer than {timeout:g} s", kind="timeout") from None
            if isinstance(event, Failed):
                raise ApiError(500, event.message, kind="server_error")
            yield event
            if isinstance(event, Done):
                return
    finally:
        ticket.cancel()  # no effect on a finished ticket; frees the row of an abandoned one


async def _watch_disconnect(request: Request, ticket: Ticket, queue: asyncio.Queue[Event]) -> None:
    while not ticket.finished.is_set():
        if await request.is_disconnected():
            ticket.cancel()
            queue.put_nowait(Failed("the client went away"))  # ends the handler now, not at its timeout
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _stream(ticket: Ticket, queue: asyncio.Queue[Event], shape: _Shape, timeout: float, usage: bool,
                  body: ChatRequest | CompletionRequest) -> AsyncIterator[dict[str, str]]:
    # sse-starlette cancels this generator when the client disconnects; _events then cancels the ticket.
    try:
        first = True
        async for event in _events(ticket, queue, timeout):
            if isinstance(event, Chunk):
                if event.text or first:
                    yield {"data": json.dumps(shape.piece(event.text, None, first))}
                    first = False
            else:
                yield {"data": json.dumps({**shape.piece("", event.reason, first), **_decision(body, event)})}
                if usage:
                    yield {"data": json.dumps({**shape.head(), "choices": [], "usage": _usage(event)})}
        yield {"data": "[DONE]"}
    except ApiError as exc:
        yield {"data": json.dumps(exc.body())}


class _Shape:
    """OpenAI's response objects for one request."""

    def __init__(self, ident: str, created: int, model: str, chat: bool) -> None:
        self.ident, self.created, self.model, self.chat = ident, created, model, chat

    def head(self, whole: bool = False) -> dict[str, Any]:
        kind = ("chat.completion" if whole else "chat.completion.chunk") if self.chat else "text_completion"
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, done: Done) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": done.reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self.head(whole=True), "choices": [choice], "usage": _usage(done)}

    def piece(self, text: str, reason: str | None, first: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
        else:
            choice["text"] = text
        return {**self.head(), "choices": [choice]}


def _decision(body: ChatRequest | CompletionRequest, done: Done) -> dict[str, Any]:
    """What a conditional program decided, for the response (nothing when the request named no program)."""
    if done.decision is None:
        return {}
    return {"conditional": {"program": body.program, "held": done.decision.held, "gates": done.decision.gates}}


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _install_errors(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx")
            message = f"malformed JSON body: {ctx.get('error') if isinstance(ctx, dict) else first['msg']}"
        else:
            message = f"{where or 'body'}: {first['msg']}"
        return JSONResponse(ApiError(400, message, param=where or None).body(), status_code=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error = ApiError(exc.status_code, str(exc.detail), kind="not_found" if exc.status_code == 404 else
                         "invalid_request_error")
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


class _TooLarge(StarletteHTTPException):
    """Raised while the body is read; an HTTP exception, so FastAPI passes it to the JSON error handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app parses it.

    Starlette's own ``RequestBodyLimitMiddleware`` answers in plain text; clients here get the JSON error shape.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(ApiError(413, str(_TooLarge(self.limit).detail)).body())
        await _send_json(send, 413, body.encode())


async def _send_json(send: Callable[[Message], Awaitable[None]], status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
