"""The pacer (service.budgets.pacer): λ converges to the λ* of a stream whose
spend-vs-λ curve is known, for cost, share and rate targets, over many seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from service.budgets.config import PacerConfig
from service.budgets.pacer import Pacer, PacerTarget

SEEDS = range(20)


def _cost_stream(pacer: Pacer, rng: np.random.Generator, n: int, c0: float) -> list[float]:
    """Each call costs c0·exp(-λ) on average (lognormal noise of mean 1), λ being the
    pacer's at the call: spend(λ) is known, so λ* = ln(c0 / b)."""
    lams = []
    for i in range(n):
        noise = rng.lognormal(-0.5 * 0.8**2, 0.8)
        pacer.observe(c0 * math.exp(-pacer.lam) * noise, "m", float(i))
        lams.append(pacer.lam)
    return lams


@pytest.mark.parametrize("target_per_1k", [0.5, 2.0, 8.0])
def test_lambda_converges_to_the_known_lambda_star(target_per_1k: float) -> None:
    c0 = 0.01  # USD per call at λ = 0
    b = target_per_1k / 1000
    lam_star = math.log(c0 / b)
    misses = []
    for seed in SEEDS:
        pacer = Pacer(PacerTarget("usd_per_1k", target_per_1k), step=0.02)
        lams = _cost_stream(pacer, np.random.default_rng(seed), 20_000, c0)
        late = float(np.mean(lams[-5_000:]))
        misses.append(abs(late - lam_star))
    # every seed: λ settles within 0.1 of λ* (the per-call noise is 80%)
    assert max(misses) < 0.1, (lam_star, misses)


def test_realised_spend_after_warm_up_is_within_two_percent() -> None:
    c0, target = 0.01, 1.0
    for seed in SEEDS:
        pacer = Pacer(PacerTarget("usd_per_1k", target), step=0.02)
        rng = np.random.default_rng(seed)
        _cost_stream(pacer, rng, 2_000, c0)  # warm-up
        spend0, n0 = pacer.spend, pacer.n
        _cost_stream(pacer, rng, 20_000, c0)
        per_1k = (pacer.spend - spend0) / (pacer.n - n0) * 1000
        assert abs(per_1k / target - 1) < 0.02, (seed, per_1k)


def test_share_target_converges() -> None:
    """P(call to the strong model) = sigmoid(a - λ): λ* = a - logit(s)."""
    a, s = 3.0, 0.2
    lam_star = a - math.log(s / (1 - s))
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        pacer = Pacer(PacerTarget("share", s, ("strong",)), step=0.02)
        lams = []
        for i in range(30_000):
            p = 1 / (1 + math.exp(-(a - pacer.lam)))
            model = "strong" if rng.random() < p else "weak"
            pacer.observe(0.001, model, float(i))
            lams.append(pacer.lam)
        assert abs(float(np.mean(lams[-10_000:])) - lam_star) < 0.15, seed


def test_rate_target_uses_the_observed_request_rate() -> None:
    """2 calls a second against $36 an hour: $0.005 a call, so λ* = ln(c0 / 0.005)."""
    c0, rate, per_hour = 0.02, 2.0, 36.0
    lam_star = math.log(c0 / (per_hour / 3600 / rate))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pacer = Pacer(PacerTarget("usd_per_hour", per_hour), step=0.02, horizon_s=600)
        lams = []
        t = 0.0
        for _ in range(20_000):
            t += rng.exponential(1 / rate)
            noise = rng.lognormal(-0.5 * 0.5**2, 0.5)
            pacer.observe(c0 * math.exp(-pacer.lam) * noise, "m", t)
            lams.append(pacer.lam)
        assert abs(float(np.mean(lams[-5_000:])) - lam_star) < 0.1, seed
        realised = pacer.realised()["usd_per_hour"]
        assert realised is not None and abs(realised / per_hour - 1) < 0.1


def test_a_price_cut_moves_lambda_to_the_new_lambda_star() -> None:
    """Halving every price halves spend(λ): λ* falls by ln 2, and the pacer follows."""
    pacer = Pacer(PacerTarget("usd_per_1k", 1.0), step=0.02)
    rng = np.random.default_rng(0)
    before = float(np.mean(_cost_stream(pacer, rng, 20_000, 0.01)[-5_000:]))
    after = float(np.mean(_cost_stream(pacer, rng, 20_000, 0.005)[-5_000:]))
    assert abs((before - after) - math.log(2)) < 0.1


def test_unreachable_target_pins_lambda_at_its_bound() -> None:
    pacer = Pacer(PacerTarget("usd_per_1k", 0.001), step=0.5, lam_max=3.0)
    for i in range(1_000):
        pacer.observe(0.01, "m", float(i))  # spend does not respond to λ at all
    assert pacer.lam == 3.0


def test_state_round_trip_continues_exactly() -> None:
    a = Pacer(PacerTarget("usd_per_hour", 10.0), step=0.05)
    for i in range(100):
        a.observe(0.001 * (i % 7), "m", 10.0 * i)
    b = Pacer(PacerTarget("usd_per_hour", 10.0), step=0.05)
    b.restore(a.state())
    for i in range(100, 200):
        assert a.observe(0.002, "m", 10.0 * i) == b.observe(0.002, "m", 10.0 * i)


def test_bad_costs_are_ignored() -> None:
    pacer = Pacer(PacerTarget("usd_per_1k", 1.0))
    for bad in (float("nan"), float("inf"), -1.0):
        assert pacer.observe(bad, "m", 0.0) == 0.0
    assert pacer.n == 0


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "usd_per_1k"),
        ({"usd_per_1k": 1.0, "share": 0.2, "share_models": ["a"]}, "usd_per_1k"),
        ({"share": 0.2}, "share_models"),
        ({"usd_per_1k": 1.0, "share_models": ["a"]}, "share_models"),
        ({"usd_per_1k": -1.0}, "usd_per_1k"),
        ({"share": 1.5, "share_models": ["a"]}, "share"),
        ({"usd_per_1k": 1.0, "lam_min": 5.0, "lam_max": 1.0}, "lam_min"),
        ({"usd_per_1k": 1.0, "step": 0.0}, "step"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        PacerConfig.model_validate(fields)


def test_config_makes_its_pacer() -> None:
    cfg = PacerConfig(usd_per_day=50.0, step=0.1, lam_max=4.0)
    pacer = cfg.make(0.7)
    assert pacer.target == PacerTarget("usd_per_day", 50.0)
    assert (pacer.lam, pacer.step, pacer.lam_max) == (0.7, 0.1, 4.0)
    assert PacerConfig(usd_per_1k=1.0, lam_start=2.0).make(0.7).lam == 2.0


@pytest.mark.parametrize("lam_star", [0.03, 0.3, 3.0])
def test_log_scale_reaches_small_and_large_lambda_star_alike(lam_star: float) -> None:
    """On log λ one step size serves a λ* of 0.03 and one of 3: spend(λ) = c0·exp(-λ/λ*)
    makes the target's λ exactly λ* · ln(c0 / b)."""
    c0, target = 0.01, 2.0
    b = target / 1000
    want = lam_star * math.log(c0 / b)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        pacer = Pacer(PacerTarget("usd_per_1k", target), step=0.02, scale="log", lam=0.2)
        lams, spend0, n0 = [], 0.0, 0
        for i in range(30_000):
            if i == 10_000:
                spend0, n0 = pacer.spend, pacer.n
            noise = rng.lognormal(-0.5 * 0.8**2, 0.8)
            pacer.observe(c0 * math.exp(-pacer.lam / lam_star) * noise, "m", float(i))
            lams.append(pacer.lam)
        assert abs(math.log(float(np.mean(lams[-5_000:])) / want)) < 0.05, (seed, want)
        per_1k = (pacer.spend - spend0) / (pacer.n - n0) * 1000
        assert abs(per_1k / target - 1) < 0.02, (seed, per_1k)


def test_log_scale_keeps_lambda_above_its_floor() -> None:
    pacer = Pacer(PacerTarget("usd_per_1k", 1.0), scale="log", lam=0.0)
    assert pacer.lam == pytest.approx(1e-3)
    for i in range(2_000):
        pacer.observe(0.0, "m", float(i))  # always under: λ falls, never to 0
    assert pacer.lam == pytest.approx(1e-3)
    pacer.observe(0.01, "m", 2_001.0)  # ten times over: it climbs at once
    assert pacer.lam > 1e-3
