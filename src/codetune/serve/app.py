"""The FastAPI app: models by name, API keys, bounded admission, OpenAI-style errors, an access log.

The endpoints live in `routes.py`, the state they share in `state.py`; this module puts them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codetune.config import Config, PromptConfig
from codetune.errors import CodetuneError
from codetune.generation import parse_model_spec
from codetune.models.backends.base import Backend
from codetune.serve.admission import GenerationTimeout, QueueFull
from codetune.serve.batching import Batcher
from codetune.serve.routes import router
from codetune.serve.state import STATIC_DIR, ApiError, ServedModel, ServerState


class AccessLog:
    """One JSON line per request: time, client, method, path, status, latency, model and tokens.
    Request headers (and so API keys) are never written."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._own = path not in (None, "", "stderr", "-")
        if self._own:
            Path(str(path)).parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] = open(str(path), "a", encoding="utf-8") if self._own else sys.stderr  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


class AccessLogMiddleware:
    """Pure ASGI (so streaming and disconnects pass through untouched); handlers add fields to
    `scope["state"]["access"]` (model, tokens, ...), written when the response has been sent."""

    def __init__(self, app: ASGIApp, log: AccessLog) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["access"] = fields

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client")
            self.log.write(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "client": client[0] if client else None,
                    "method": scope["method"],
                    "path": scope["path"],  # without the query string
                    "status": status[0],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    **fields,
                }
            )


class BodyLimitMiddleware:
    """Refuses a request body over `limit` bytes with 413 before anything reads it whole: at once when
    its Content-Length says so, else as soon as the bytes received pass the limit. The app then sees
    the client as gone and what it answers is dropped, so memory stays bounded whatever is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send, int(length))
            return
        received, refused = 0, False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    await self._refuse(send, None)
            return {"type": "http.disconnect"} if refused else message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after a 413 the app answers a body it never got: nobody is listening
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else f"over {self.limit} bytes"
        error = ApiError(
            413,
            f"request body is {size}, over this server's limit of {self.limit} bytes "
            "(serve.max_body_bytes); send a shorter prompt",
            param="request body",
            code="request_too_large",
        )
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send(
            {"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]}
        )
        await send({"type": "http.response.body", "body": body})


def read_api_keys(cfg: Config) -> list[str]:
    """`serve.api_keys` plus the lines of `serve.api_keys_file` (blank lines and '#' comments skipped)."""
    keys = [k.strip() for k in cfg.serve.api_keys if k.strip()]
    if cfg.serve.api_keys_file:
        path = Path(cfg.serve.api_keys_file)
        if not path.is_file():
            raise CodetuneError(f"serve.api_keys_file {path} not found")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return keys


def model_specs(cfg: Config) -> list[tuple[str, str]]:
    """(name, path) of every model to serve: serve.models, else generate.model."""
    models = cfg.serve.models
    if isinstance(models, dict):
        return list(models.items())
    specs = [parse_model_spec(m) for m in models] if models else []
    if not specs and cfg.generate.model:
        specs = [parse_model_spec(cfg.generate.model)]
    if not specs:
        raise CodetuneError("no model to serve: set serve.models (name=path ...) or generate.model")
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise CodetuneError(f"serve.models: model names must differ, got {names}")
    return specs


def _prompt_of(path: str | None, fallback: PromptConfig) -> PromptConfig:
    """The prompt a model folder was trained with. Only folders carry one: asking only for them keeps
    torch out of a server that runs GGUF files on llama.cpp."""
    if path is None or not Path(path).is_dir():
        return fallback
    from codetune.generation import model_prompt_config

    return model_prompt_config(path, fallback)


def load_models(cfg: Config, backends: Mapping[str, Backend] | None = None) -> dict[str, ServedModel]:
    """Load every model of `model_specs(cfg)` with the backends `codetune generate` uses (one load per
    distinct path); `backends` (tests) are used as they are, named by their keys."""
    from codetune.generation import load_backend

    now = int(time.time())
    if backends is not None:
        paths = dict(model_specs(cfg)) if cfg.serve.models else {}
        batchers = {id(b): Batcher(b) for b in backends.values()}
        return {
            name: ServedModel(
                name, b, _prompt_of(paths.get(name), cfg.prompt), paths.get(name, ""), now, batchers[id(b)]
            )
            for name, b in backends.items()
        }
    loaded: dict[tuple[str, str], tuple[Backend, Batcher]] = {}
    out = {}
    for name, path in model_specs(cfg):
        gguf = path.endswith(".gguf") and Path(path).is_file()
        kind = cfg.serve.backend or ("llamacpp" if gguf else cfg.generate.backend)
        if (kind, path) not in loaded:
            backend = load_backend(dataclasses.replace(cfg.generate, backend=kind), path)
            loaded[kind, path] = (backend, Batcher(backend))
        backend, batcher = loaded[kind, path]
        out[name] = ServedModel(name, backend, _prompt_of(path, cfg.prompt), path, now, batcher)
    return out


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": str(exc)}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    ctx = first.get("ctx") or {}  # a custom error may name the field itself
    where = ".".join(loc) or str(ctx.get("param", "request body"))
    return ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where).response()


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def queue_full(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, QueueFull)
        headers = {"Retry-After": str(exc.retry_after)}
        return ApiError(429, str(exc), "rate_limit_error", code="queue_full", headers=headers).response()

    async def timeout(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(504, str(exc), "timeout_error", code="timeout").response()

    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(400, str(exc)).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return _validation_error(request, exc)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # still logged by Starlette
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(GenerationTimeout, timeout)
    app.add_exception_handler(CodetuneError, user_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(Exception, unexpected)


def create_app(cfg: Config, backends: Mapping[str, Backend] | None = None) -> FastAPI:
    """The server app for `cfg.serve`. `backends` (keyed by model name) replaces loading the models."""
    keys = read_api_keys(cfg)
    state = ServerState(cfg, load_models(cfg, backends), keys)
    log = AccessLog(cfg.serve.access_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.admission.close()
            log.close()

    app = FastAPI(
        title="codetune", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.codetune = state
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=cfg.serve.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, log=log)  # added last: the outermost, so it logs the 413s too
    return app
