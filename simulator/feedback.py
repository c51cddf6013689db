"""How feedback reaches the learner in a replay: late, sometimes never, from a noisy
judge, and applied in batches as the service's learner applies its stream."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FeedbackSpec:
    """delay: decisions that pass before an outcome arrives (0: at once).
    missing: probability an outcome never arrives.
    flip: probability a judge reports 1 - quality (for 0/1 outcomes: a wrong verdict).
    jitter: standard deviation of Gaussian noise on the reported quality (clipped to [0, 1]).
    batch: outcomes the learner applies at once; the policy that chooses meanwhile is
    the one from before the batch, like a worker serving the last published snapshot.
    """

    delay: int = 0
    missing: float = 0.0
    flip: float = 0.0
    jitter: float = 0.0
    batch: int = 1

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        for name in ("missing", "flip"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @property
    def immediate(self) -> bool:
        return self == FeedbackSpec()


@dataclass(frozen=True)
class Outcome:
    """One learning event: what the learner is told of decision `step`."""

    step: int
    row: int
    model: str
    quality: float
    cost: float
    propensity: float


@dataclass
class FeedbackChannel:
    """Decisions go in as they are made; outcomes come out when the spec says the
    learner would apply them. Seeded: the same spec and seed drop and perturb the
    same outcomes."""

    spec: FeedbackSpec
    seed: int = 0
    _rng: np.random.Generator = field(init=False)
    _in_flight: deque[tuple[int, Outcome]] = field(init=False, default_factory=deque)
    _arrived: list[Outcome] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def send(self, outcome: Outcome) -> None:
        """Decision `outcome.step` was made and its true outcome is `outcome`."""
        if self.spec.missing and self._rng.random() < self.spec.missing:
            return
        q = outcome.quality
        if self.spec.flip and self._rng.random() < self.spec.flip:
            q = 1.0 - q
        if self.spec.jitter:
            q = float(np.clip(q + self._rng.normal(0.0, self.spec.jitter), 0.0, 1.0))
        reported = Outcome(
            outcome.step, outcome.row, outcome.model, q, outcome.cost, outcome.propensity
        )
        self._in_flight.append((outcome.step + self.spec.delay, reported))

    def due(self, step: int) -> list[Outcome]:
        """Outcomes to apply before decision `step` is made, in arrival order: those
        that arrived by then, once a full batch has gathered."""
        while self._in_flight and self._in_flight[0][0] < step:
            self._arrived.append(self._in_flight.popleft()[1])
        if len(self._arrived) < self.spec.batch:
            return []
        out, self._arrived = self._arrived, []
        return out

    def flush(self) -> list[Outcome]:
        """Everything still pending (the end of the stream)."""
        out = self._arrived + [o for _, o in self._in_flight]
        self._arrived, self._in_flight = [], deque()
        return out
