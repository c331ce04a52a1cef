"""The endpoints: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, codetune's own
/v1/generate (description -> code, for the playground), /health, and the playground page at /.

Every generation goes through the Backend protocol (`generate` / `stream`), admitted by `Admission`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from codetune.config import GenerateConfig, PromptConfig
from codetune.errors import CodetuneError
from codetune.generation import (
    answer_stops,
    description_prompt,
    extract_code,
    infill_prompt,
    sampling_settings,
)
from codetune.models.backends.base import Completion, SamplingSettings
from codetune.serve.admission import GenerationTimeout
from codetune.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    GenerateRequest,
    ModelCard,
    ModelList,
    Usage,
    _Request,
)
from codetune.serve.state import STATIC_DIR, ApiError, ServedModel, ServerState

log = logging.getLogger("codetune.serve")

LANGUAGES = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "java": "Java",
    "c": "C",
    "cpp": "C++",
    "go": "Go",
    "rust": "Rust",
    "bash": "Bash",
    "sql": "SQL",
}

# chunk(text, finish_reason) -> one SSE chunk; text None marks the closing chunk.
ChunkMaker = Callable[[str | None, str | None], BaseModel]


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.codetune
    return state


def _access(request: Request) -> dict[str, Any]:
    fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("access", {})
    return fields


async def require_key(request: Request) -> None:
    _state(request).check_key(request.headers.get("authorization"))


router = APIRouter()
auth = [Depends(require_key)]


# -- pure helpers -------------------------------------------------------------------------------


def playground_description(description: str, language: str, mode: str, code: str) -> str:
    """The description the model is prompted with. Python is what codetune's own recipes train on, so
    a Python request passes the description unchanged (the prompt the model saw in training)."""
    name = LANGUAGES.get(language, language)
    if mode == "translate":
        ask = f"Translate this code to {name}." + (f" {description.strip()}" if description.strip() else "")
        return f"{ask}\n\n{code}"
    if language == "python":
        return description
    return f"{description.rstrip()} Write it in {name}."


def _refuse(condition: bool, message: str, param: str) -> None:
    if condition:
        raise ApiError(400, message, param=param, code="unsupported_parameter")


def _decoding(state: ServerState, body: _Request, max_tokens: int | None) -> GenerateConfig:
    """Decoding settings: the request's, else `generate.*` from the config; limits checked."""
    g, limit = state.cfg.generate, state.cfg.serve.max_tokens_limit
    _refuse(
        bool(body.presence_penalty or body.frequency_penalty),
        "penalties are not supported",
        "presence_penalty",
    )
    _refuse(body.stream and body.n > 1, "n > 1 cannot be streamed; ask for n=1 or drop stream", "n")
    if max_tokens is None:
        max_tokens = min(g.max_new_tokens, limit)
    elif max_tokens > limit:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens}, over this server's limit of {limit} (serve.max_tokens_limit)",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    return dataclasses.replace(
        g,
        max_new_tokens=max_tokens,
        temperature=g.temperature if body.temperature is None else body.temperature,
        top_p=g.top_p if body.top_p is None else body.top_p,
        n=body.n,
        seed=g.seed if body.seed is None else body.seed,
        stop=[s for s in body.stops() if s],
    )


def _check_prompt(state: ServerState, served: ServedModel, prompt: str) -> int:
    limit = state.cfg.serve.max_prompt_tokens
    n = served.backend.count_tokens(prompt)
    if n > limit:
        raise ApiError(
            400,
            f"prompt is {n} tokens, over this server's limit of {limit} (serve.max_prompt_tokens); shorten it",
            param="prompt",
            code="context_length_exceeded",
        )
    return n


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _event(data: BaseModel | dict[str, Any]) -> str:
    payload = data.model_dump() if isinstance(data, BaseModel) else data
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error_event(e: BaseException) -> str:
    if isinstance(e, GenerationTimeout):
        return _event(ApiError(504, str(e), "timeout_error", code="timeout").body())
    if isinstance(e, CodetuneError):
        return _event(ApiError(400, str(e)).body())
    log.error("generation failed", exc_info=e)
    return _event(ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error").body())


# -- generation ---------------------------------------------------------------------------------


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _generate(
    request: Request, served: ServedModel, prompts: list[str], s: SamplingSettings
) -> list[list[Completion]]:
    """`backend.generate` once admitted, in one call with the other requests waiting to generate with
    the same settings (`Batcher`). A client that leaves while its request waits in the queue
    gives up its place, also while it waits for the model; one that leaves during generation stops it
    on llama.cpp (its sequences leave the running batch), not on transformers."""
    access = _access(request)
    withdrawn = threading.Event()
    work = asyncio.ensure_future(
        _state(request).admission.call(lambda: served.batcher.generate(prompts, s, withdrawn))
    )
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        access["cancelled"] = True
        withdrawn.set()  # not generated for, unless its batch has started already
        work.cancel()
        raise ApiError(499, "client closed the request", code="client_closed_request")
    if isinstance(work.exception(), GenerationTimeout):
        withdrawn.set()  # timed out waiting for the model: not generated for later
    rows: list[list[Completion]] = work.result()
    return rows


async def _sse(
    request: Request,
    served: ServedModel,
    prompt: str,
    settings: SamplingSettings,
    prompt_tokens: int,
    chunk: ChunkMaker,
    lead: list[BaseModel],
    usage_chunk: Callable[[Usage], BaseModel] | None,
) -> StreamingResponse:
    """Stream one completion as server-sent events; a client that goes away cancels the generation."""
    pieces = await _state(request).admission.stream(lambda: served.batcher.stream(prompt, settings))
    access, started = _access(request), time.perf_counter()

    async def events() -> AsyncIterator[str]:
        text, finished = "", False
        try:
            for c in lead:
                yield _event(c)
            try:
                async for piece in pieces:
                    if not text:
                        access["first_token_ms"] = round((time.perf_counter() - started) * 1000, 1)
                    text += piece
                    yield _event(chunk(piece, None))
            except Exception as e:
                finished = True
                access["error"] = type(e).__name__
                yield _error_event(e)
                yield "data: [DONE]\n\n"
                return
            tokens = await run_in_threadpool(served.backend.count_tokens, text)
            access["completion_tokens"] = tokens
            yield _event(chunk(None, "length" if tokens >= settings.max_new_tokens else "stop"))
            if usage_chunk is not None:
                yield _event(usage_chunk(_usage(prompt_tokens, tokens)))
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away: `pieces` has told the worker to stop
                access["cancelled"] = True

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(pieces.cancel.set),
    )


def _note(request: Request, served: ServedModel, stream: bool, prompt_tokens: int) -> None:
    _access(request).update(model=served.name, stream=stream, prompt_tokens=prompt_tokens)


# -- endpoints ----------------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    state = _state(request)
    a = state.admission
    return {
        "status": "ok",
        "models": list(state.models),
        "auth_required": bool(state.keys),
        "running": a.running,
        "waiting": a.waiting,
        "max_concurrent": a.max_concurrent,
        "max_queue": a.max_queue,
    }


@router.get("/v1/models", dependencies=auth)
async def list_models(request: Request) -> ModelList:
    models = _state(request).models.values()
    return ModelList(data=[ModelCard(id=m.name, created=m.created) for m in models])


# (prompts, extra stop sequences): built from the request in a worker thread (templates, tokenizers)
PromptBuilder = Callable[[], tuple[list[str], tuple[str, ...]]]


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What differs between the generating endpoints' answers."""

    chat: bool = False  # chat.completion(.chunk) objects, else text_completion
    echo: list[str] | None = None  # /v1/completions echo: each prompt's text goes before its answer
    extract: PromptConfig | None = None  # /v1/generate: the code is extracted from the answer's Markdown


async def _answer(
    request: Request,
    served: ServedModel,
    body: _Request,
    max_tokens: int | None,
    build: PromptBuilder,
    shape: _Shape,
) -> Response:
    """The skeleton every generating endpoint shares: check the decoding settings, build the prompts and
    count their tokens off the event loop (a long prompt must not hold up other requests), then stream
    the answer or generate it whole, in the endpoint's wire shape."""
    state = _state(request)
    decoding = _decoding(state, body, max_tokens)

    def prepare() -> tuple[list[str], tuple[str, ...], list[int]]:
        prompts, extra_stop = build()
        return prompts, extra_stop, [_check_prompt(state, served, p) for p in prompts]

    prompts, extra_stop, counts = await run_in_threadpool(prepare)
    settings = sampling_settings(decoding, extra_stop)
    _note(request, served, body.stream, sum(counts))
    rid, created = f"{'chatcmpl' if shape.chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())

    def wrap(choices: list[Any], usage: Usage | None = None) -> BaseModel:
        if shape.chat:
            return ChatChunk(id=rid, created=created, model=served.name, choices=choices, usage=usage)
        return CompletionResponse(id=rid, created=created, model=served.name, choices=choices, usage=usage)

    def chunk(text: str | None, reason: str | None) -> BaseModel:
        if shape.chat:
            delta = Delta(content=text) if text is not None else Delta()
            return wrap([ChatChunkChoice(delta=delta, finish_reason=reason)])  # type: ignore[arg-type]
        return wrap([CompletionChoice(index=0, text=text or "", finish_reason=reason)])  # type: ignore[arg-type]

    if body.stream:
        _refuse(len(prompts) > 1, "stream takes one prompt, not a list", "prompt")
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        usage_chunk = (lambda u: wrap([], u)) if include_usage else None
        lead = [chunk(shape.echo[0], None)] if shape.echo else []
        if shape.chat:
            lead = [wrap([ChatChunkChoice(delta=Delta(role="assistant", content=""))])]
        return await _sse(request, served, prompts[0], settings, counts[0], chunk, lead, usage_chunk)

    rows = await _generate(request, served, prompts, settings)
    usage = _usage(
        sum(row[0].prompt_tokens for row in rows), sum(c.completion_tokens for r in rows for c in r)
    )
    _access(request)["completion_tokens"] = usage.completion_tokens
    if shape.chat:
        chat_choices = [
            ChatChoice(index=j, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
            for j, c in enumerate(rows[0])
        ]
        out = ChatResponse(id=rid, created=created, model=served.name, choices=chat_choices, usage=usage)
        return JSONResponse(out.model_dump())
    choices = [
        CompletionChoice(
            index=i * settings.n + j, text=_final_text(shape, i, c.text), finish_reason=c.finish_reason
        )
        for i, row in enumerate(rows)
        for j, c in enumerate(row)
    ]
    return JSONResponse(wrap(choices, usage).model_dump())


def _final_text(shape: _Shape, prompt_index: int, text: str) -> str:
    if shape.extract is not None:
        return extract_code(text, shape.extract)
    return (shape.echo[prompt_index] if shape.echo else "") + text


@router.post("/v1/completions", dependencies=auth)
async def completions(body: CompletionRequest, request: Request) -> Response:
    served = _state(request).model(body.model)
    _refuse(body.logprobs is not None, "logprobs are not supported", "logprobs")
    _refuse((body.best_of or 1) > 1, "best_of > 1 is not supported; use n", "best_of")
    _refuse(body.echo and body.suffix is not None, "echo cannot be combined with suffix", "echo")
    texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    _refuse(not texts, "prompt is an empty list", "prompt")

    def build() -> tuple[list[str], tuple[str, ...]]:
        if body.suffix is None:
            return texts, ()
        try:  # fill in the middle, with the model's own FIM tokens
            built = [infill_prompt(t, body.suffix, served.backend, f"model {served.name!r}") for t in texts]
        except CodetuneError as e:
            raise ApiError(400, str(e), param="suffix", code="fim_not_supported") from None
        return [p for p, _ in built], built[0][1]

    shape = _Shape(echo=texts if body.echo else None)
    return await _answer(request, served, body, body.max_tokens, build, shape)


@router.post("/v1/chat/completions", dependencies=auth)
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    served = _state(request).model(body.model)
    _refuse(bool(body.logprobs), "logprobs are not supported", "logprobs")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]

    def build() -> tuple[list[str], tuple[str, ...]]:
        try:
            return [served.backend.chat_prompt(messages)], ()
        except CodetuneError as e:
            raise ApiError(400, str(e), param="messages", code="no_chat_template") from None
        except Exception as e:  # a template that rejects these messages (roles, order)
            msg = f"the chat template of model {served.name!r} rejected the messages: {e}"
            raise ApiError(400, msg, param="messages") from None

    max_tokens = body.max_completion_tokens or body.max_tokens
    return await _answer(request, served, body, max_tokens, build, _Shape(chat=True))


@router.post("/v1/generate", dependencies=auth)
async def generate_code(body: GenerateRequest, request: Request) -> Response:
    """Description -> code with the model's trained prompt (as `codetune generate`); the answer has the
    shape of /v1/completions. Without streaming, code is extracted from Markdown as the CLI does."""
    state = _state(request)
    served = state.model(body.model)
    _refuse(
        body.mode == "translate" and not body.code.strip(), "translate needs the code to translate", "code"
    )
    _refuse(
        body.mode == "complete" and not body.description.strip(), "describe the code to write", "description"
    )

    def build() -> tuple[list[str], tuple[str, ...]]:
        description = playground_description(body.description, body.language, body.mode, body.code)
        prompt = description_prompt(description, served.prompt, served.backend)
        if body.mode == "complete":
            prompt += body.code  # the start of the answer, continued by the model
        return [prompt], tuple(state.cfg.generate.stop) + answer_stops(served.prompt)

    return await _answer(request, served, body, body.max_tokens, build, _Shape(extract=served.prompt))
