"""Implicit signals: feedback read from how a conversation goes, each off by default.

- regenerate: the same question again in the session soon after an answer. It
  usually means the answer failed; it misleads when users regenerate to see a
  second opinion, or when a client retries a request that timed out on its side.
- continued: a new question in the session. It usually means the answer was usable;
  it misleads most: a user may go on *because* the answer was wrong ("no, I meant
  ..."), so give it a modest quality.
- refusal: the answer reads as a refusal ("I can't help with that"). It misleads
  where refusing is right (unsafe requests): the router then learns to prefer a model
  that complies.
(An upstream error is learned by the gateway's fallback as `error_quality`.)

Each becomes feedback on the session's previous event through `Deferred`, so a
user's own feedback on that event still wins. Sessions are remembered in this
process, bounded and expiring: across workers a session's signals are only seen by
the worker that served its previous turn."""

from __future__ import annotations

import collections
import hashlib
import re
import time
from dataclasses import dataclass

from service.gateway.config import ImplicitConfig

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry,? but )?(i\s+(can(no|')t|cannot|am unable to|won'?t)|"
    r"as an ai\b)[^.]{0,80}\b(help|assist|comply|provide|do that|answer)",
    re.IGNORECASE,
)
MAX_SESSIONS = 100_000


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text[:300]))


@dataclass(frozen=True)
class Turn:
    event_id: str
    created_at: float
    question: str  # a digest: the text itself is never kept
    at: float


def digest(question: str) -> str:
    return hashlib.blake2b(" ".join(question.split()).lower().encode(), digest_size=16).hexdigest()


class Implicit:
    def __init__(self, cfg: ImplicitConfig) -> None:
        self.cfg = cfg
        self._last: collections.OrderedDict[str, Turn] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        c = self.cfg
        return c.regenerate is not None or c.continued is not None or c.refusal is not None

    def on_request(self, session: str, question: str) -> tuple[Turn, str, float] | None:
        """The signal a new request of `session` gives on its previous turn: (that
        turn, source, quality), or None."""
        prev = self._last.get(session)
        if prev is None or time.time() - prev.at > self.cfg.window_s:
            return None
        if digest(question) == prev.question:
            if self.cfg.regenerate is not None:
                return prev, "implicit_regenerate", self.cfg.regenerate
        elif self.cfg.continued is not None:
            return prev, "implicit_continued", self.cfg.continued
        return None

    def on_answer(self, session: str, event_id: str, created_at: float, question: str) -> None:
        self._last[session] = Turn(event_id, created_at, digest(question), time.time())
        self._last.move_to_end(session)
        while len(self._last) > MAX_SESSIONS:
            self._last.popitem(last=False)

    def refusal(self, answer: str) -> float | None:
        if self.cfg.refusal is None or not is_refusal(answer):
            return None
        return self.cfg.refusal
