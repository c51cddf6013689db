"""The gateway's request path: route, call the chosen model's upstream (falling back
to another candidate on 429, 5xx, timeouts and refused connections, before any byte
reached the client), relay the answer, price it from its usage, attach the cost to
the decision, and hand the answer to the judge and the implicit signals."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.budgets import gate
from service.budgets.tenancy import request_tenant, scoped_session, tenant_of_event
from service.embedder import text_from_messages
from service.gateway.cascade import as_stream
from service.gateway.cascade import run as run_cascade
from service.gateway.config import CascadeConfig
from service.gateway.pricing import Usage, call_cost
from service.gateway.request import ChatCompletionRequest, Extensions, extensions, resolve
from service.gateway.service import Gateway
from service.gateway.upstreams import Upstream
from service.outcomes import apply_cost, apply_quality
from service.privacy.guard import all_text, refusal, tags_of
from service.privacy.rules import Restriction
from service.routing import Routed, decide, resolve_policy
from service.runtime_state import Runtime
from service.store.base import StoreUnavailable

log = logging.getLogger("banditroute.gateway")
HEADER = "x-banditroute-"


@dataclass(frozen=True)
class Failure:
    """An upstream call that failed in a way another model may not: rate-limited, a
    server error, a timeout or no connection."""

    kind: str  # "429", "5xx", "timeout", "connect"
    status: int  # what the client gets if no fallback succeeds
    detail: str
    retry_after: str | None = None


@dataclass(frozen=True)
class Opened:
    """An upstream answer whose status is read (a stream: nothing relayed yet)."""

    resp: httpx.Response
    started: float  # perf_counter() when the request was sent


@dataclass
class Serving:
    """The model a request is being served by, and what the client is told."""

    model: str
    upstream: Upstream
    event_id: str | None = None
    created_at: float = 0.0
    policy: str | None = None
    propensity: float | None = None
    turn: int | None = None  # the session turn, for a pinned session's later turns
    prompt_tokens: int = 1  # the route-time estimate, for a stream cut before its usage
    restricted: tuple[str, ...] = ()  # the sensitive entity types that restricted it
    degraded: bool = False
    fallbacks: int = 0

    def headers(self, cost: float | None = None) -> dict[str, str]:
        h = {HEADER + "model": self.model}
        if self.event_id is not None:
            h[HEADER + "event-id"] = self.event_id
        if self.policy is not None:
            h[HEADER + "policy"] = self.policy
        if self.propensity is not None:
            h[HEADER + "propensity"] = repr(self.propensity)
        if self.turn is not None:
            h[HEADER + "session-turn"] = str(self.turn)
        if self.degraded:
            h[HEADER + "degraded"] = "true"
        if self.fallbacks:
            h[HEADER + "fallbacks"] = str(self.fallbacks)
        if self.restricted:
            h[HEADER + "restricted"] = ",".join(self.restricted)
        if cost is not None:
            h[HEADER + "cost-usd"] = repr(cost)
        return h

    def meta(self, cost: float | None) -> dict[str, Any]:
        """The same, for a stream's final chunk (its headers left before the cost was
        known)."""
        out: dict[str, Any] = {"model": self.model, "cost_usd": cost}
        for k in ("event_id", "policy", "propensity", "turn", "fallbacks"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.degraded:
            out["degraded"] = True
        return out


def _prompt_tokens(req: ChatCompletionRequest) -> int:
    """A route-time estimate of the prompt's tokens (about 4 characters a token)."""
    chars = 0
    for m in req.messages:
        c = m.get("content")
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(
                len(p["text"]) for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return max(1, chars // 4)


async def chat(
    rt: Runtime, gw: Gateway, req: ChatCompletionRequest, request: Request, role: str | None
) -> Response:
    target = resolve(rt, req.model, gw.pool.models)
    ext = extensions(request, req, gw.cfg.session_from_user)
    tenant = request_tenant(rt, role, ext.tenant)
    ext = dataclasses.replace(ext, session=scoped_session(tenant, ext.session))
    try:
        text = text_from_messages(req.messages)
    except (ValueError, TypeError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"messages: {exc}") from exc
    if not text.strip():
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "messages: the last user message has no text"
        )
    if len(text) > rt.settings.max_query_chars:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"messages: {len(text)} characters exceeds the limit of {rt.settings.max_query_chars}",
        )
    guard = await gw.privacy.check(rt.store, all_text(req.messages), ext.sensitive, ext.session)
    if target.model is not None:  # a named model: no routing, nothing learned
        if not guard.allowed([target.model], tags_of(rt.catalogue)):
            raise refusal(guard, f"model {target.model!r} is not allowed for them")
        _check_direct(rt, tenant, target.model)
        return await _direct(rt, gw, req, target.model, text, ext, guard)
    return await _routed(rt, gw, req, text, ext, target.policy, target.experiment, guard, tenant)


def _check_direct(rt: Runtime, tenant: str | None, model: str) -> None:
    """A call to a named model is neither routed nor reserved: a capped tenant is only
    routed, and any tenant calls only its own models (403)."""
    if tenant is None:
        return
    cfg = rt.tenants[tenant]
    if cfg.cap is not None or (cfg.candidates is not None and model not in cfg.candidates):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"model: tenant {tenant!r} may not call {model!r} directly; use model 'auto'",
        )


async def _direct(
    rt: Runtime,
    gw: Gateway,
    req: ChatCompletionRequest,
    model: str,
    text: str,
    ext: Extensions,
    guard: Restriction,
) -> Response:
    up = gw.pool.get(model)
    assert up is not None
    restricted = guard.entities if guard.applies else ()
    direct = Serving(model, up, prompt_tokens=_prompt_tokens(req), restricted=restricted)
    opened = await _open(rt, up, req)
    if isinstance(opened, Failure):
        return _failure_response(opened, direct)
    return await _answer(rt, gw, req, opened, direct, text, ext)


async def _routed(
    rt: Runtime,
    gw: Gateway,
    req: ChatCompletionRequest,
    text: str,
    ext: Extensions,
    policy: str | None,
    experiment: str | None,
    guard: Restriction,
    tenant: str | None = None,
) -> Response:
    name, serving, exp, variant, unit = resolve_policy(rt, policy, experiment, ext.unit, tenant)
    known = set(serving.policy.models)
    candidates = [m for m in gw.pool.models if m in rt.catalogue and m in known]
    candidates += [c for c in gw.cascades if c in rt.catalogue and c in known]
    if not candidates:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"model: no model of router {name!r} has an upstream configured "
            "([models.upstream] in the config)",
        )
    if guard.applies:
        # restricted before the policy chooses: no fallback or pin can leave the set
        candidates = guard.allowed(candidates, tags_of(rt.catalogue))
        if not candidates:
            fallback = gw.privacy.cfg.fallback_model
            if fallback is not None and gw.pool.get(fallback) is not None:
                _check_direct(rt, tenant, fallback)
                return await _direct(rt, gw, req, fallback, text, ext, guard)
            raise refusal(guard, f"router {name!r} has no such model")
    if ext.session is not None and gw.implicit.enabled:
        signal = gw.implicit.on_request(ext.session, text)
        if signal is not None:
            prev, source, quality = signal
            gw.deferred.schedule(prev.event_id, prev.created_at, quality, source)
    last: Failure | None = None
    failed: list[str] = []
    prompt_tokens = _prompt_tokens(req)
    # a capped tenant's every turn reserves its own estimate: no pinned turns
    capped = tenant is not None and rt.tenants[tenant].cap is not None
    pinned = None if capped else await _pinned(rt, gw, name, ext, candidates, prompt_tokens)
    if pinned is not None:
        opened = await _open(rt, pinned.upstream, req)
        if not isinstance(opened, Failure):
            return await _answer(rt, gw, req, opened, pinned, text, ext)
        last, failed = opened, [pinned.model]
    x = await rt.batcher.features(text)
    for _ in range(1 + gw.cfg.fallback_attempts):
        left = [c for c in candidates if c not in failed]
        if not left:
            break
        # each try is a decision of its own over the candidates not yet failed, logged
        # with its propensity there: the first over all, a fallback over the rest
        try:
            routed = await decide(
                rt,
                text,
                x,
                name,
                serving,
                left,
                ext.cost_weight,
                experiment=exp,
                variant=variant,
                unit=unit,
                awaits_cost=req.stream,
                prompt_tokens=prompt_tokens,
                restricted=list(guard.entities) if guard.applies else None,
                tenant=tenant,
                max_output_tokens=req.max_output_tokens,
            )
        except HTTPException:
            if last is None:
                raise
            break  # the policy gives the models left no chance (e.g. weight 0): stop here
        cascade = gw.cascades.get(routed.model)
        if cascade is not None:
            done = await _cascade(rt, gw, req, cascade, routed, text, ext, len(failed), guard)
            if done is not None:
                return done
            failed.append(routed.model)
            last = Failure("5xx", 502, f"cascade {routed.model} failed")
            await _record_failure(rt, gw, routed)
            continue
        up = gw.pool.get(routed.model)
        assert up is not None
        current = _serving(routed, up, len(failed), prompt_tokens)
        current.restricted = guard.entities if guard.applies else ()
        opened = await _open(rt, up, req)
        if isinstance(opened, Failure):
            last = opened
            failed.append(routed.model)
            await _record_failure(rt, gw, routed)
            continue
        if (
            ext.session is not None
            and gw.cfg.session_turns > 1
            and routed.record is not None
            and not capped
        ):
            try:
                await rt.store.pin_session(
                    name,
                    ext.session,
                    routed.record.event_id,
                    routed.model,
                    gw.cfg.session_turns,
                    gw.cfg.session_ttl_s,
                )
            except StoreUnavailable:
                log.warning("session %s: not pinned, the store is unreachable", ext.session)
        return await _answer(rt, gw, req, opened, current, text, ext)
    assert last is not None
    return _failure_response(last, None, tried=failed)


async def _cascade(
    rt: Runtime,
    gw: Gateway,
    req: ChatCompletionRequest,
    cfg: CascadeConfig,
    routed: Routed,
    text: str,
    ext: Extensions,
    fallbacks: int,
    guard: Restriction,
) -> Response | None:
    """Serve a cascade arm (whole, not streamed: the confidence needs the first answer
    complete); None when every call of it failed."""
    body = req.model_dump(exclude_unset=True)
    body.pop("model", None)
    judge = None if gw.judge is None else gw.judge.cfg.model
    outcome = await run_cascade(cfg, gw.pool, rt.catalogue, body, text, judge)
    m = rt.metrics
    for c in outcome.calls:
        m.upstream_calls.labels(c.model, "ok" if c.ok else str(c.status)).inc()
        m.upstream_cost.labels(c.model).inc(c.cost)
    if not outcome.final.ok or outcome.final.data is None:
        return None
    m.cascades.labels(cfg.name, str(outcome.escalated).lower()).inc()
    first = gw.pool.get(cfg.first)
    assert first is not None
    serving = _serving(routed, first, fallbacks, 1)
    serving.restricted = guard.entities if guard.applies else ()
    cost = outcome.cost
    if serving.event_id is not None:
        try:
            await apply_cost(rt, serving.event_id, cost)
        except StoreUnavailable:
            log.warning("cost of %s not attached: the store is unreachable", serving.event_id)
        log.info(
            "cascade %s for %s: confidence %s, escalated %s, %d calls, %.3g USD",
            cfg.name,
            serving.event_id,
            outcome.confidence,
            outcome.escalated,
            len(outcome.calls),
            cost,
        )
    data = outcome.final.data
    data["model"] = cfg.name
    _after_answer(gw, serving, text, outcome.final.text, ext)
    headers = {
        **serving.headers(cost),
        HEADER + "answered-by": outcome.final.model,
        HEADER + "escalated": str(outcome.escalated).lower(),
    }
    if req.stream:
        meta = {**serving.meta(cost), "answered_by": outcome.final.model}
        meta["escalated"] = outcome.escalated
        return Response(as_stream(data, meta), media_type="text/event-stream", headers=headers)
    return Response(
        json.dumps(data, separators=(",", ":")), media_type="application/json", headers=headers
    )


def _serving(routed: Routed, up: Upstream, fallbacks: int, prompt_tokens: int) -> Serving:
    rec = routed.record
    return Serving(
        model=routed.model,
        upstream=up,
        event_id=None if rec is None else rec.event_id,
        created_at=time.time() if rec is None else rec.created_at,
        policy=routed.policy,
        propensity=routed.propensity,
        degraded=routed.degraded,
        fallbacks=fallbacks,
        prompt_tokens=prompt_tokens,
    )


async def _pinned(
    rt: Runtime,
    gw: Gateway,
    name: str,
    ext: Extensions,
    candidates: list[str],
    prompt_tokens: int,
) -> Serving | None:
    """The model a session is pinned to for this turn, if it still has turns."""
    if ext.session is None or gw.cfg.session_turns <= 1:
        return None
    try:
        pin = await rt.store.session_turn(name, ext.session)
    except StoreUnavailable:
        return None
    if pin is None:
        return None
    event_id, model, turn = pin
    up = gw.pool.get(model)
    if up is None or model not in candidates:
        return None
    # machine feedback on a pinned turn waits from this turn on: the user then has at
    # least the whole wait to rate the session's event
    return Serving(
        model=model,
        upstream=up,
        event_id=event_id,
        created_at=time.time(),
        policy=name,
        turn=turn,
        prompt_tokens=prompt_tokens,
    )


async def _record_failure(rt: Runtime, gw: Gateway, routed: Routed) -> None:
    """The failed call is its decision's outcome: error_quality at cost 0 (nothing
    was generated), so the policy learns that this model fails here."""
    if routed.record is None:
        return
    event_id = routed.record.event_id
    if gw.cfg.error_quality is None:
        await _release(rt, event_id)
        return
    try:
        # the cost first: a streaming decision awaits one, and would park the quality
        await apply_cost(rt, event_id, 0.0)
        await apply_quality(rt, event_id, gw.cfg.error_quality, source="upstream_error")
    except StoreUnavailable:
        log.warning("failed call of %s not recorded: the store is unreachable", event_id)


async def _release(rt: Runtime, event_id: str | None) -> None:
    """Free a capped tenant's reservation for a call that cost nothing (else it would
    hold the budget until its timeout)."""
    if event_id is None:
        return
    try:
        await gate.release(rt, tenant_of_event(event_id), event_id)
    except StoreUnavailable:
        log.warning("reservation of %s not released: the store is unreachable", event_id)


async def _open(rt: Runtime, up: Upstream, req: ChatCompletionRequest) -> Opened | Failure:
    """Send the request upstream; a stream is open with its status read, nothing
    relayed yet (so a failure can still fall back)."""
    started = time.perf_counter()
    try:
        resp = await up.client.send(
            up.request(req.upstream_body(up.upstream_model), stream=req.stream), stream=req.stream
        )
    except httpx.TimeoutException as exc:
        return _failed(
            rt, up, Failure("timeout", 504, f"upstream timed out ({type(exc).__name__})")
        )
    except httpx.HTTPError as exc:
        return _failed(rt, up, Failure("connect", 502, f"upstream unreachable ({exc})"))
    code = resp.status_code
    if code == 429 or code >= 500:
        try:
            body = (await resp.aread())[:1000].decode("utf-8", "replace")
        except httpx.HTTPError as exc:
            body = f"(its body could not be read: {type(exc).__name__})"
        finally:
            await resp.aclose()
        kind = "429" if code == 429 else "5xx"
        return _failed(rt, up, Failure(kind, code, body, resp.headers.get("retry-after")))
    return Opened(resp, started)


def _failed(rt: Runtime, up: Upstream, f: Failure) -> Failure:
    rt.metrics.upstream_calls.labels(up.model, f.kind).inc()
    log.warning("upstream %s failed: %s %s", up.model, f.kind, f.detail[:200])
    return f


def _failure_response(
    f: Failure, serving: Serving | None, tried: list[str] | None = None
) -> Response:
    """The last failure, OpenAI-shaped, once no candidate is left to try."""
    message = f"upstream call failed ({f.kind})"
    if tried:
        message += f"; tried {tried}"
    headers = {} if serving is None else serving.headers()
    if f.retry_after is not None:
        headers["retry-after"] = f.retry_after
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "upstream_error",
                "code": f.kind,
                "detail": f.detail,
            }
        },
        status_code=f.status if f.status in (429, 502, 503, 504) else 502,
        headers=headers,
    )


async def _answer(
    rt: Runtime,
    gw: Gateway,
    req: ChatCompletionRequest,
    opened: Opened,
    serving: Serving,
    text: str,
    ext: Extensions,
) -> Response:
    resp = opened.resp
    if req.stream and resp.status_code == 200:
        return StreamingResponse(
            _relay(rt, gw, req, opened, serving, text, ext),
            media_type="text/event-stream",
            headers={**serving.headers(), "cache-control": "no-cache"},
        )
    if req.stream:  # a stream the upstream answered with an error status
        try:
            await resp.aread()
        except httpx.HTTPError:
            pass
        finally:
            await resp.aclose()
    elapsed = time.perf_counter() - opened.started
    m = rt.metrics
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code != 200 or not isinstance(data, dict):
        # the upstream refused the request itself (a 4xx): the client's to fix, not the
        # model's fault, so nothing is learned
        m.upstream_calls.labels(serving.model, "4xx").inc()
        await _release(rt, serving.event_id)  # nothing was generated: nothing to charge
        return Response(
            resp.content,
            status_code=resp.status_code,
            media_type=resp.headers.get("content-type"),
            headers=serving.headers(),
        )
    m.upstream_calls.labels(serving.model, "ok").inc()
    m.upstream_seconds.labels(serving.model, "ttft").observe(elapsed)
    m.upstream_seconds.labels(serving.model, "total").observe(elapsed)
    data["model"] = serving.model
    cost = await _settle(rt, serving, Usage.parse(data.get("usage")), 0)
    answer = _content(data)
    _after_answer(gw, serving, text, answer, ext)
    return Response(
        json.dumps(data, separators=(",", ":")),
        media_type="application/json",
        headers=serving.headers(cost),
    )


def _content(data: dict[str, Any]) -> str:
    try:
        return str(data["choices"][0]["message"].get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


async def _settle(rt: Runtime, serving: Serving, usage: Usage | None, chunks: int) -> float | None:
    """Price the call and attach the cost to its decision (the first turn of a session
    carries the session's learning event, so later turns only count in metrics).
    Without usage (a stream cut short) the completion is counted as one token per
    content chunk relayed, the prompt as its route-time estimate."""
    price = rt.catalogue.get(serving.model)
    if price is None:
        return None
    if usage is None:
        usage = Usage(prompt_tokens=serving.prompt_tokens, completion_tokens=chunks)
    cost = call_cost(price, usage)
    rt.metrics.upstream_cost.labels(serving.model).inc(cost)
    if serving.event_id is not None and serving.turn is None:
        try:
            await apply_cost(rt, serving.event_id, cost)
        except StoreUnavailable:
            log.warning("cost of %s not attached: the store is unreachable", serving.event_id)
    return cost


def _after_answer(gw: Gateway, serving: Serving, text: str, answer: str, ext: Extensions) -> None:
    """The answer reached the client: offer it to the judge, read the refusal signal,
    and remember the turn for the session's next request."""
    if serving.event_id is None:
        return
    if serving.turn is None and gw.judge is not None and gw.may_judge(serving.restricted):
        gw.judge.offer(serving.event_id, serving.created_at, text, answer)
    refusal = gw.implicit.refusal(answer)
    if refusal is not None:
        gw.deferred.schedule(serving.event_id, serving.created_at, refusal, "implicit_refusal")
    if ext.session is not None and gw.implicit.enabled:
        gw.implicit.on_answer(ext.session, serving.event_id, serving.created_at, text)


async def _relay(
    rt: Runtime,
    gw: Gateway,
    req: ChatCompletionRequest,
    opened: Opened,
    serving: Serving,
    text: str,
    ext: Extensions,
) -> AsyncIterator[bytes]:
    """Relay the upstream's SSE stream chunk by chunk with the catalogue model's name.
    The final chunk carries the event's metadata with its cost: the usage chunk if
    the client asked for usage, else the chunk with the finish reason (held back
    until the usage behind it arrives)."""
    resp, started = opened.resp, opened.started
    m = rt.metrics
    parts: list[str] = []
    chunks = 0
    usage: Usage | None = None
    cost: float | None = None
    held: list[dict[str, Any]] = []  # finish chunks (one per choice) awaiting the usage
    done = broke = first = False
    # the judge and the implicit signals read the answer's text: then every chunk is
    # parsed; otherwise only the few that carry usage or a finish reason
    fast = _FastChunks(serving.upstream.upstream_model, serving.model, gw.needs_text)
    try:
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                if not first:
                    first = True
                    m.upstream_seconds.labels(serving.model, "ttft").observe(
                        time.perf_counter() - started
                    )
                plain = fast.plain(payload)
                if plain is not None:
                    chunks += plain[1]
                    yield plain[0]
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    yield f"data: {payload}\n\n".encode()
                    continue
                if not isinstance(chunk, dict):
                    yield f"data: {payload}\n\n".encode()
                    continue
                chunk["model"] = serving.model
                choices = chunk.get("choices") or ()
                for choice in choices:
                    delta = (choice or {}).get("delta") or {}
                    if delta.get("content"):
                        chunks += 1
                        parts.append(str(delta["content"]))
                parsed = Usage.parse(chunk.get("usage"))
                if parsed is not None:
                    # shielded: a client that leaves now must not cancel the cost's attach
                    with anyio.CancelScope(shield=True):
                        cost = await _settle(rt, serving, parsed, chunks)
                    usage = parsed
                    if not req.wants_usage:
                        chunk.pop("usage", None)
                        for h in held:
                            h["banditroute"] = serving.meta(cost)
                            yield _sse(h)
                        held = []
                        if not choices:
                            continue
                    chunk["banditroute"] = serving.meta(cost)
                elif not req.wants_usage and any((c or {}).get("finish_reason") for c in choices):
                    held.append(chunk)
                    continue
                yield _sse(chunk)
        except httpx.HTTPError as exc:
            # the upstream broke mid-stream: bytes were sent, so no fallback; the client
            # gets an error event and a proper end rather than a cut connection
            broke = True
            log.warning("upstream %s broke mid-stream: %s", serving.model, exc)
            error = {"message": f"the upstream stream broke ({type(exc).__name__})"}
            yield _sse({"error": {**error, "type": "upstream_error"}})
        for h in held:  # an upstream that sent no usage
            h["banditroute"] = serving.meta(cost)
            yield _sse(h)
        yield b"data: [DONE]\n\n"
        done = True
    finally:
        with anyio.CancelScope(shield=True):
            await resp.aclose()
        m.upstream_seconds.labels(serving.model, "total").observe(time.perf_counter() - started)
        if usage is None:
            # what was generated is paid for and learned, however the stream ended
            gw.spawn(_settle(rt, serving, None, chunks))
        if done and not broke:
            m.upstream_calls.labels(serving.model, "ok").inc()
            _after_answer(gw, serving, text, "".join(parts), ext)
        else:
            # the client left mid-stream (the upstream call is cancelled: closed above),
            # or the upstream broke
            m.upstream_calls.labels(
                serving.model, "stream_error" if broke else "disconnected"
            ).inc()


class _FastChunks:
    """Relays an ordinary content chunk without parsing it: the upstream's model name
    swapped for the catalogue's by a byte replace, a content delta counted by its
    shape. A chunk it cannot vouch for (usage, a finish reason, another layout) is left
    to the JSON path."""

    def __init__(self, upstream_model: str, model: str, needs_text: bool) -> None:
        self.enabled = not needs_text
        name, ours = json.dumps(upstream_model), json.dumps(model)
        self.swaps = [
            (f'"model":{name}', f'"model":{ours}'),
            (f'"model": {name}', f'"model": {ours}'),
        ]

    def plain(self, payload: str) -> tuple[bytes, int] | None:
        """(the SSE line to send, 1 if it carries content else 0), or None."""
        if not self.enabled or '"usage":{' in payload or '"usage": {' in payload:
            return None
        if '"finish_reason":"' in payload or '"finish_reason": "' in payload:
            return None
        for theirs, ours in self.swaps:
            if theirs in payload:
                if payload.count(theirs) != 1:
                    return None  # the name also occurs in the content: parse
                swapped = payload.replace(theirs, ours)
                break
        else:
            return None
        empty = any(e in payload for e in _EMPTY_CONTENT)
        content = 0 if empty or '"content"' not in payload else 1
        return f"data: {swapped}\n\n".encode(), content


_EMPTY_CONTENT = ('"content":""', '"content": ""', '"content":null', '"content": null')


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
