"""A local OpenAI-compatible chat-completions server with scripted answers.

The gateway's tests, the benchmarks and the README example need a real HTTP upstream on
loopback that speaks the OpenAI wire format (plain and SSE streaming answers, usage,
errors) without a network or an API bill. This server answers every chat request with a
deterministic text, and lets a test script what comes next: an error status (429, 5xx,
with Retry-After), a hang, a slow stream, an exact text or usage, a refusal. It records
every request it received, including how far a stream got before the client went away.

Run it with `python -m simulator.upstream --port 9101` or `banditroute upstream`.

Control endpoints (outside /v1, no API key):

- `POST /_script`: a JSON list of steps, consumed one per chat request in order (then
  back to the defaults); `GET` lists the steps left, `DELETE` drops them.
- `POST /_config`: step keys that apply to every request until changed (a key set to
  null goes back to its start value); `GET` shows the defaults, `DELETE` restores the
  start values.
- `GET /_calls`: every chat request received, in order; `DELETE` clears them.
- `GET /_health`: 200 once the server accepts requests.

A request header `x-upstream-step: <json step>` applies that step to that request alone
instead of the next scripted one, so that concurrent tests do not race on the queue.

Step keys: `status` (an HTTP status: 200 answers, 4xx/5xx answer an OpenAI-style error),
`retry_after` (seconds, sent as Retry-After with an error), `message` (the error's
message), `delay_ms` (alias `latency_ms`: a wait before answering), `words` (words of
the answer), `chunk_ms` (a wait before each streamed chunk), `content` (the exact answer
text), `refuse` (answer a refusal), `usage` (exact `prompt_tokens`, `completion_tokens`,
`total_tokens`, `cached_tokens`, `reasoning_tokens` to report), `truncate_after` (end a
stream after that many word chunks, without its finish chunk, usage or [DONE]).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

REFUSAL = "I'm sorry, but I can't help with that."
# deterministic filler that pads an answer to its number of words
FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
).split()
STEP_HEADER = "x-upstream-step"
# the answer's start values; --latency-ms, --chunk-ms and --words change them
START: dict[str, Any] = {
    "status": 200,
    "retry_after": None,
    "message": None,
    "delay_ms": 0.0,
    "words": 12,
    "chunk_ms": 0.0,
    "content": None,
    "refuse": False,
    "usage": None,
    "truncate_after": None,
}
USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)
# the fields a call record keeps apart from `extra`
RECORDED = ("model", "messages", "stream", "stream_options")


def check_step(raw: Any, *, keep_null: bool = False) -> dict[str, Any]:
    """A step (or /_config body) validated and normalised (`latency_ms` -> `delay_ms`),
    so that a typo in a test's script fails at once with a 400 rather than silently
    answering normally. Nulls are dropped unless `keep_null` (/_config: reset a key)."""
    if not isinstance(raw, dict):
        raise ValueError(f"a step is a JSON object, not {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = "delay_ms" if key == "latency_ms" else key
        if name not in START:
            raise ValueError(f"unknown step key {key!r} (known: {sorted(START)}, latency_ms)")
        if value is None:
            if keep_null:
                out[name] = None
            continue
        if name == "status":
            if not _is_int(value) or not (value == 200 or 400 <= value <= 599):
                raise ValueError(f"status must be 200 or 400..599, not {value!r}")
        elif name in ("retry_after", "delay_ms", "chunk_ms"):
            if not _is_number(value) or value < 0:
                raise ValueError(f"{key} must be a number >= 0, not {value!r}")
            value = float(value)
        elif name in ("words", "truncate_after"):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, not {value!r}")
        elif name in ("content", "message"):
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string, not {value!r}")
        elif name == "refuse":
            if not isinstance(value, bool):
                raise ValueError(f"refuse must be true or false, not {value!r}")
        elif name == "usage":
            if not isinstance(value, dict) or not set(value) <= set(USAGE_KEYS):
                raise ValueError(f"usage must be an object with keys among {USAGE_KEYS}")
            if not all(_is_int(v) and v >= 0 for v in value.values()):
                raise ValueError(f"usage counts must be integers >= 0, not {value!r}")
        out[name] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    """A deterministic prompt size: every message's text characters // 4, at least 1."""
    chars = sum(len(text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, chars // 4)


def answer_text(model: str, messages: list[Any], words: int) -> str:
    """`answer from MODEL to: <first 40 chars of the last user message>`, cut or padded
    with filler to exactly `words` words, so a test can predict text and token counts."""
    last = next(
        (
            text_of(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    parts = f"answer from {model} to: {last[:40]}".split()
    while len(parts) < words:
        parts.append(FILLER[(len(parts)) % len(FILLER)])
    return " ".join(parts[:words])


def pieces_of(text: str) -> list[str]:
    """The streamed deltas of a text, one a word with its leading whitespace; joined they
    give the text back exactly. Their number is the completion token count."""
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    tail = text[len("".join(pieces)) :]
    pieces[-1] += tail
    return pieces


def usage_of(step: dict[str, Any], prompt: int, completion: int) -> dict[str, Any]:
    """The OpenAI usage object: computed counts, each overridable by the step's `usage`."""
    exact = step.get("usage") or {}
    p = int(exact.get("prompt_tokens", prompt))
    c = int(exact.get("completion_tokens", completion))
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": int(exact.get("total_tokens", p + c)),
        "prompt_tokens_details": {
            "cached_tokens": int(exact.get("cached_tokens", 0)),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": int(exact.get("reasoning_tokens", 0)),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


_ERROR_KINDS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "Permission denied."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached; please try again later."),
    503: ("server_error", "service_unavailable", "The server is overloaded; try again later."),
}


def error_response(
    status: int, message: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    """An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`."""
    kind, code, default = _ERROR_KINDS.get(
        status,
        ("server_error", None, "The server had an error while processing your request.")
        if status >= 500
        else ("invalid_request_error", None, "Request failed."),
    )
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    body = {"error": {"message": message or default, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class State:
    """What the server remembers: its defaults, the scripted steps and the calls."""

    def __init__(self, models: Sequence[str], api_key: str | None, start: dict[str, Any]):
        self.models = list(models)
        self.api_key = api_key
        self.start = {**START, **check_step(start)}
        self.config = dict(self.start)
        self.script: deque[dict[str, Any]] = deque()
        self.calls: list[dict[str, Any]] = []


class _RecordedStream(StreamingResponse):
    """A stream that notes in its call record whether the client went away before the
    end, and closes its generator then so that generation stops at once. (Under ASGI
    spec 2.3 Starlette cancels the send on `http.disconnect`; the generator may be
    suspended at a yield and would otherwise linger until garbage collection.)"""

    def __init__(self, body: AsyncIterator[str], record: dict[str, Any]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
        self._body = body
        self._record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._record["completed"]:
                self._record["disconnected"] = True
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()


def create_app(
    models: Sequence[str] = (),
    *,
    api_key: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Starlette:
    """The upstream's ASGI app: `models` for /v1/models, an optional API key every /v1
    request must bear, and start values of the step keys (e.g. {"words": 20})."""
    state = State(models, api_key, defaults or {})

    def authorised(request: Request) -> bool:
        return state.api_key is None or request.headers.get("authorization") == (
            f"Bearer {state.api_key}"
        )

    async def chat(request: Request) -> Response:
        headers: dict[str, str | None] = {"authorization": None, **request.headers}
        record: dict[str, Any] = {
            "seq": len(state.calls),
            "model": None,
            "messages": None,
            "stream": False,
            "stream_options": None,
            "extra": {},
            "headers": headers,
            "step": None,
            "status": None,
            "chunks_sent": 0,
            "disconnected": False,
            "completed": False,
            "truncated": False,
        }
        state.calls.append(record)

        def answered(response: Response) -> Response:
            record["status"] = response.status_code
            record["completed"] = True
            return response

        try:
            body = json.loads(await request.body())
        except ValueError:
            return answered(error_response(400, "The request body is not valid JSON."))
        if not isinstance(body, dict):
            return answered(error_response(400, "The request body must be a JSON object."))
        for key in RECORDED:
            if key in body:
                record[key] = body[key]
        record["stream"] = bool(body.get("stream", False))
        record["extra"] = {k: v for k, v in body.items() if k not in RECORDED}
        if not authorised(request):
            return answered(error_response(401))
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            return answered(error_response(400, "you must provide a model parameter"))
        if not isinstance(messages, list) or not messages:
            return answered(error_response(400, "'messages' must be a non-empty array"))

        try:
            if STEP_HEADER in request.headers:
                step = check_step(json.loads(request.headers[STEP_HEADER]))
            else:
                step = state.script.popleft() if state.script else {}
        except ValueError as exc:
            return answered(error_response(400, f"bad {STEP_HEADER} header: {exc}"))
        record["step"] = step
        eff = {**state.config, **step}

        if eff["delay_ms"] > 0 and await _wait_or_gone(request, eff["delay_ms"] / 1000):
            record["disconnected"] = True  # gone during the hang: never answered
            return Response(status_code=499)
        if eff["status"] != 200:
            return answered(error_response(eff["status"], eff["message"], eff["retry_after"]))

        if eff["refuse"]:
            text = REFUSAL
        elif eff["content"] is not None:
            text = eff["content"]
        else:
            text = answer_text(model, messages, eff["words"])
        pieces = pieces_of(text)
        usage = usage_of(eff, prompt_tokens(messages), len(pieces))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if record["stream"]:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            record["status"] = 200
            chunks = _chunks(cid, created, model, pieces, usage, include_usage, eff, record)
            return _RecordedStream(chunks, record)
        record["chunks_sent"] = len(pieces)
        return answered(
            JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        )

    async def list_models(request: Request) -> Response:
        if not authorised(request):
            return error_response(401)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "banditroute"}
                    for m in state.models
                ],
            }
        )

    async def script(request: Request) -> Response:
        if request.method == "POST":
            try:
                steps = await request.json()
                if not isinstance(steps, list):
                    raise ValueError("the script is a JSON list of steps")
                state.script.extend([check_step(s) for s in steps])
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        elif request.method == "DELETE":
            state.script.clear()
        return JSONResponse(list(state.script))

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = check_step(await request.json(), keep_null=True)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            for key, value in changes.items():
                state.config[key] = state.start[key] if value is None else value
        elif request.method == "DELETE":
            state.config = dict(state.start)
        return JSONResponse(state.config)

    async def calls(request: Request) -> Response:
        if request.method == "DELETE":
            state.calls.clear()
        return JSONResponse(state.calls)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/_script", script, methods=["GET", "POST", "DELETE"]),
            Route("/_config", config, methods=["GET", "POST", "DELETE"]),
            Route("/_calls", calls, methods=["GET", "DELETE"]),
            Route("/_health", health, methods=["GET"]),
        ]
    )
    app.state.upstream = state
    return app


async def _wait_or_gone(request: Request, seconds: float) -> bool:
    """Sleep `seconds`, watching the client: True as soon as it disconnects (a timeout
    test's client gave up on the hang), False after the full wait."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return True
        await asyncio.sleep(min(left, 0.02))
    return False


async def _chunks(
    cid: str,
    created: int,
    model: str,
    pieces: list[str],
    usage: dict[str, Any],
    include_usage: bool,
    step: dict[str, Any],
    record: dict[str, Any],
) -> AsyncIterator[str]:
    """The SSE events of a streamed answer in OpenAI's chunk shape: a role delta, one
    delta a word (`chunk_ms` apart), the finish chunk, the usage chunk when asked, and
    [DONE]. `record["chunks_sent"]` counts the word chunks the server handed on."""
    pause = step["chunk_ms"] / 1000

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            **({"usage": None} if include_usage else {}),
            **extra,
        }
        return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    yield event(delta({"role": "assistant", "content": "", "refusal": None}))
    for i, piece in enumerate(pieces):
        if step["truncate_after"] is not None and i >= step["truncate_after"]:
            record["completed"] = True
            record["truncated"] = True
            return
        if pause:
            await asyncio.sleep(pause)
        yield event(delta({"content": piece}))
        record["chunks_sent"] += 1
    if pause:
        await asyncio.sleep(pause)
    yield event(delta({}, "stop"))
    if include_usage:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"
    record["completed"] = True


def serve(
    host: str = "127.0.0.1",
    port: int = 9101,
    *,
    models: Sequence[str] = (),
    api_key: str | None = None,
    latency_ms: float = 0.0,
    chunk_ms: float = 0.0,
    words: int = 12,
) -> None:
    """Run the upstream under uvicorn: one worker, warnings only, no access log, and a
    short graceful shutdown so a hung scripted request does not hold up a test's exit."""
    import uvicorn

    app = create_app(
        models,
        api_key=api_key,
        defaults={"delay_ms": latency_ms, "chunk_ms": chunk_ms, "words": words},
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m simulator.upstream`: the same options as `banditroute upstream`."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator.upstream",
        description="A local OpenAI-compatible chat-completions server with scripted answers.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument(
        "--model", action="append", default=[], help="a model for /v1/models (repeatable)"
    )
    parser.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument("--chunk-ms", type=float, default=0.0, help="wait between chunks")
    parser.add_argument("--words", type=int, default=12, help="words of an answer")
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        models=args.model,
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        chunk_ms=args.chunk_ms,
        words=args.words,
    )


if __name__ == "__main__":
    main()
