"""An NER-based detector behind the same interface, where presidio-analyzer is installed.

Patterns find identifiers with a shape (cards, IBANs, keys); they cannot find a
patient's name or a home town. Presidio (a spaCy model plus its own recognisers) can,
at a cost of milliseconds per query rather than microseconds, so it is optional: it
is not a dependency of banditroute, `PresidioDetector` raises ImportError when the
package is missing, and `CombinedDetector` runs it after the patterns behind the
same `Detector` interface.

Presidio's entity types map onto this package's (``CREDIT_CARD`` -> ``payment_card``,
``US_SSN`` / ``UK_NHS`` / ``ES_NIF`` / ... -> ``national_id``); names and places come
out as the extra types in NER_ENTITIES ("person", "location"), which routing rules
must name to act on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from service.privacy.detect import ENTITIES, Detector, Finding, resolve_overlaps

NER_ENTITIES: tuple[str, ...] = ("person", "location")

PRESIDIO_TYPES: dict[str, str] = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "payment_card",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ip_address",
    "US_SSN": "national_id",
    "US_ITIN": "national_id",
    "US_PASSPORT": "national_id",
    "US_DRIVER_LICENSE": "national_id",
    "UK_NHS": "national_id",
    "UK_NINO": "national_id",
    "ES_NIF": "national_id",
    "ES_NIE": "national_id",
    "IT_FISCAL_CODE": "national_id",
    "IT_PASSPORT": "national_id",
    "IT_IDENTITY_CARD": "national_id",
    "PL_PESEL": "national_id",
    "FI_PERSONAL_IDENTITY_CODE": "national_id",
    "AU_TFN": "national_id",
    "IN_AADHAAR": "national_id",
    "IN_PAN": "national_id",
    "SG_NRIC_FIN": "national_id",
    "MEDICAL_LICENSE": "national_id",
    "PERSON": "person",
    "LOCATION": "location",
}


class _Result(Protocol):
    entity_type: str
    start: int
    end: int
    score: float


class _Analyzer(Protocol):
    def analyze(self, text: str, language: str, entities: list[str] | None = ...) -> Any: ...


def presidio_available() -> bool:
    """Whether presidio-analyzer can be imported here."""
    return importlib.util.find_spec("presidio_analyzer") is not None


class PresidioDetector:
    """Presidio's analyzer as a `Detector`: findings for the entity types in
    `entities` (None: every type PRESIDIO_TYPES maps to), scored at least `min_score`.
    `analyzer`: an AnalyzerEngine (or anything with its `analyze`); None builds the
    default one, which loads a spaCy model (seconds, once)."""

    def __init__(
        self,
        entities: Iterable[str] | None = None,
        *,
        language: str = "en",
        min_score: float = 0.5,
        analyzer: _Analyzer | None = None,
    ) -> None:
        known = set(ENTITIES) | set(NER_ENTITIES)
        wanted = tuple(dict.fromkeys(entities)) if entities is not None else tuple(known)
        unknown = [e for e in wanted if e not in known]
        if unknown:
            raise ValueError(f"unknown entity type(s) {unknown}; known: {sorted(known)}")
        self.entities = frozenset(wanted)
        self._types = sorted(t for t, e in PRESIDIO_TYPES.items() if e in self.entities)
        self.language = language
        self.min_score = min_score
        if analyzer is None:
            if not presidio_available():
                raise ImportError(
                    "PresidioDetector needs presidio-analyzer (pip install presidio-analyzer "
                    "and a spaCy model); it is optional and not a dependency of banditroute"
                )
            from presidio_analyzer import AnalyzerEngine

            analyzer = AnalyzerEngine()
        self._analyzer = analyzer

    def detect(self, text: str) -> list[Finding]:
        if not text or not self._types:
            return []
        results: Sequence[_Result] = self._analyzer.analyze(
            text=text, language=self.language, entities=self._types
        )
        out = [
            Finding(PRESIDIO_TYPES[r.entity_type], r.start, r.end, float(r.score))
            for r in results
            if r.entity_type in PRESIDIO_TYPES
            and PRESIDIO_TYPES[r.entity_type] in self.entities
            and r.score >= self.min_score
        ]
        return resolve_overlaps(out)

    def entities_in(self, text: str) -> set[str]:
        return {f.entity for f in self.detect(text)}


class CombinedDetector:
    """Several detectors as one (patterns first, then a model): every finding, with
    overlaps resolved to the highest score."""

    def __init__(self, *detectors: Detector) -> None:
        self.detectors = detectors

    def detect(self, text: str) -> list[Finding]:
        return resolve_overlaps([f for d in self.detectors for f in d.detect(text)])

    def entities_in(self, text: str) -> set[str]:
        return {f.entity for f in self.detect(text)}
