"""The privacy rules at request time: detect what a request carries (off the event
loop), add what its session carried before, and say which models may see it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from fastapi import HTTPException, status

from service.privacy.rules import FLAG, PrivacyConfig, Restriction, restriction
from service.store.base import ModelPrice, Store, StoreUnavailable

log = logging.getLogger("banditroute.privacy")
UNRESTRICTED = Restriction((), None)
# detection of a text this short costs about what a hop to a worker thread does (tens of
# microseconds), so it runs inline; a longer one runs off the event loop
INLINE_CHARS = 2000


class PrivacyGuard:
    def __init__(self, cfg: PrivacyConfig) -> None:
        self.cfg = cfg
        self.detector = None
        if cfg.enabled:
            from service.privacy.detect import PatternDetector

            self.detector = PatternDetector(cfg.entities)

    async def check(
        self, store: Store, text: str, flagged: bool, session: str | None
    ) -> Restriction:
        """The restriction for a request with this text (every message's), the
        request's own flag and its session."""
        if self.detector is None:
            return UNRESTRICTED
        if len(text) <= INLINE_CHARS:
            found = set(self.detector.entities_in(text))
        else:
            found = set(await asyncio.to_thread(self.detector.entities_in, text))
        if flagged:
            found.add(FLAG)
        if session is not None:
            try:
                if found:
                    await store.flag_session(session, sorted(found), self.cfg.session_ttl_s)
                found |= await store.session_flags(session)
            except StoreUnavailable:
                # what the session carried before is unknown: fail closed
                log.warning("privacy: session history unknown (store unreachable); restricting")
                found.add(FLAG)
        return restriction(self.cfg, found)


def tags_of(catalogue: Mapping[str, ModelPrice]) -> dict[str, Sequence[str]]:
    return {name: list(p.meta.get("tags") or ()) for name, p in catalogue.items()}


def all_text(messages: Sequence[Mapping[str, object]]) -> str:
    """Every message's text (the system prompt and earlier turns carry data too)."""
    out: list[str] = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(out)


def refusal(guard: Restriction, why: str) -> HTTPException:
    """The 422 for a request no allowed model can take; it names the entity types and
    the allowed tags, never the matched text."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"messages: the conversation carries sensitive data ({', '.join(guard.entities)}) "
        f"that only models tagged {sorted(guard.allow_tags or ())} may see; {why}",
    )
