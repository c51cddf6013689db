"""Routing rules on top of the policy: where sensitive data may go.

Models carry tags in the catalogue (`local`, `eu`, `cloud`, ...). A rule maps what a
request carries (detected entity types, or the request's own flag
`x-banditroute-sensitive: true`) to the tags allowed to see it; the candidates are
restricted to models with an allowed tag before the policy chooses. Several rules
that match all apply (a model must satisfy each). A session that once carried
sensitive data stays restricted (the store remembers its entity types). When no
candidate is allowed, the answer is a 422 naming the entity types, or the configured
fallback model: never a silent call to a model the rules exclude. The decision log
records the restriction and the entity types found, never the matched text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

# "flag": the request said it is sensitive (a header), whatever was detected
FLAG = "flagged"
ANY = "*"


class PrivacyRule(BaseModel):
    """Requests carrying any of `entities` (entity types of service.privacy.detect,
    "*" for any, "flagged" for the request's own flag) go only to models tagged with
    one of `allow_tags`."""

    entities: list[str] = Field(default_factory=lambda: [ANY], min_length=1)
    allow_tags: list[str] = Field(min_length=1)


class PrivacyConfig(BaseModel):
    enabled: bool = False
    # which entity types the detector looks for (None: all it knows)
    entities: list[str] | None = None
    rules: list[PrivacyRule] = Field(default_factory=list)
    # served (if it has an allowed tag) when no candidate is allowed; None: a 422
    fallback_model: str | None = None
    # how long a session stays restricted after its last sensitive request
    session_ttl_s: float = Field(default=24 * 3600, gt=0)

    @model_validator(mode="after")
    def _known_entities(self) -> PrivacyConfig:
        named = [("entities", self.entities or [])] + [
            (f"rules[{i}].entities", r.entities) for i, r in enumerate(self.rules)
        ]
        if not any(names for _, names in named):
            return self
        from service.privacy.detect import ENTITIES

        for where, names in named:
            unknown = sorted(set(names) - set(ENTITIES) - {ANY, FLAG})
            if unknown:
                raise ValueError(
                    f"privacy.{where}: unknown entity type(s) {unknown}; known: "
                    f"{sorted(ENTITIES)}, '{ANY}' (any) and '{FLAG}' (the request's flag)"
                )
        return self


@dataclass(frozen=True)
class Restriction:
    """What the rules allow for one request: the entity types it carries (sorted; the
    session's earlier ones included) and the allowed tags (None: unrestricted)."""

    entities: tuple[str, ...]
    allow_tags: frozenset[str] | None

    @property
    def applies(self) -> bool:
        return self.allow_tags is not None

    def allowed(self, models: Sequence[str], tags: Mapping[str, Sequence[str]]) -> list[str]:
        if self.allow_tags is None:
            return list(models)
        return [m for m in models if self.allow_tags & set(tags.get(m, ()))]


def restriction(cfg: PrivacyConfig, entities: set[str]) -> Restriction:
    """The tags every matching rule allows (their intersection across rules)."""
    allow: set[str] | None = None
    for rule in cfg.rules:
        wanted = set(rule.entities)
        matched = bool(entities & wanted) or (ANY in wanted and bool(entities - {FLAG}))
        if FLAG in entities and (FLAG in wanted or ANY in wanted):
            matched = True
        if matched:
            tags = set(rule.allow_tags)
            allow = tags if allow is None else allow & tags
    return Restriction(tuple(sorted(entities)), None if allow is None else frozenset(allow))
