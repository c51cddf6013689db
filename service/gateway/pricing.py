"""The cost of one call, from the upstream's `usage` and the catalogue price.

OpenAI's usage counts cached prompt tokens inside `prompt_tokens`
(`prompt_tokens_details.cached_tokens`) and reasoning tokens inside
`completion_tokens` (`completion_tokens_details.reasoning_tokens`), so cached tokens
are priced at the cached rate instead of the input rate, and reasoning tokens are
already billed as output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.store.base import ModelPrice


@dataclass(frozen=True)
class Usage:
    """Token counts of one call (tokens)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def parse(cls, usage: Any) -> Usage | None:
        """The usage object of an OpenAI response or final stream chunk, or None when
        it is missing or malformed (an upstream that reports none)."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        if not _count(prompt) or not _count(completion):
            return None
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        return cls(
            int(prompt),
            int(completion),
            int(cached) if _count(cached) else 0,
            int(reasoning) if _count(reasoning) else 0,
        )


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def call_cost(price: ModelPrice, usage: Usage) -> float:
    """USD of one call: uncached prompt tokens at the input price, cached ones at
    `cached_input_per_m` (default the input price), completion tokens (reasoning
    included) at the output price."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.meta.get("cached_input_per_m")
    if cached_rate is None:
        cached_rate = price.input_per_m
    return (
        (usage.prompt_tokens - cached) * price.input_per_m
        + cached * float(cached_rate)
        + usage.completion_tokens * price.output_per_m
    ) / 1e6
