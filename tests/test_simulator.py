"""Simulator pieces on cases with a known answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from policies import make_policy
from simulator.data import load_routing_data, model_columns
from simulator.embeddings import embed_texts
from simulator.replay import cost_scale_of, replay_online, rewards, seeded_order
from simulator.stats import mean_ci
from tests.service_helpers import data_file


def _table(tmp_path: Path) -> Path:
    df = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "prompt": ["p1", "p2", "p3", "p4"],
            "eval_name": ["t", "t", "u", "u"],
            "split": ["train", "train", "test", "test"],
            "cheap": [0.0, 1.0, np.nan, 0.0],
            "cheap|total_cost": [0.001, 0.001, np.nan, 0.001],
            "strong": [1.0, 1.0, 1.0, np.nan],
            "strong|total_cost": [0.01, 0.01, 0.01, np.nan],
            "orphan": [1.0, 1.0, 1.0, 1.0],  # no cost column: not a model
        }
    )
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    return path


def test_loader_finds_models_and_masks_missing(tmp_path: Path) -> None:
    rd = load_routing_data(_table(tmp_path))
    assert rd.models == ["cheap", "strong"]
    assert rd.available.tolist() == [[True, True], [True, True], [False, True], [True, False]]
    assert cost_scale_of(rd) == pytest.approx(0.01)


def test_shipped_routerbench_loads_with_its_nan_cells() -> None:
    path = data_file("routerbench_arc_mbpp_winogrande.parquet")
    rd = load_routing_data(path)
    assert len(rd) == 3178 and len(rd.models) == 11
    # the data README: 154 RouterBench cells are NaN
    assert int((~rd.available).sum()) == 154
    assert model_columns(pd.read_parquet(path)) == rd.models


def test_replay_reveals_only_the_chosen_outcome_and_skips_missing(tmp_path: Path) -> None:
    rd = load_routing_data(_table(tmp_path))
    X = np.eye(4)
    policy = make_policy("fixed", rd.models, 4, model="cheap")
    res = replay_online(policy, X, rd, np.arange(4), lam=1.0, cost_scale=0.01)
    # row 3 (index 2) has no cheap outcome, so the fixed router falls back to strong
    assert res.chosen.tolist() == [0, 0, 1, 0]
    assert res.quality.tolist() == [0.0, 1.0, 1.0, 0.0]
    # reward = quality - 1.0 * cost / 0.01
    assert res.reward == pytest.approx([-0.1, 0.9, 0.0, -0.1])
    # oracle: best available reward per row
    assert res.oracle_reward == pytest.approx([0.0, 0.9, 0.0, -0.1])
    assert res.regret == pytest.approx([0.1, 0.0, 0.0, 0.0])
    assert policy.updates == 4
    assert np.isnan(rewards(rd, 1.0, 0.01)[2, 0])


def test_seeded_order_is_a_repeatable_permutation() -> None:
    a, b = seeded_order(50, 3), seeded_order(50, 3)
    assert sorted(a.tolist()) == list(range(50))
    assert a.tolist() == b.tolist()
    assert a.tolist() != seeded_order(50, 4).tolist()


def test_mean_ci_matches_the_t_interval() -> None:
    v = [1.0, 2.0, 3.0, 4.0]
    ci = mean_ci(v)
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2.0
    assert ci.mean == 2.5
    assert (ci.low, ci.high) == pytest.approx((2.5 - half, 2.5 + half))
    assert mean_ci([7.0]).low == 7.0
    with pytest.raises(ValueError):
        mean_ci([])


class _CountingEmbedder:
    """Unit-test double for the cache logic only: deterministic vectors, counted calls."""

    dim = 3

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.asarray([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"model": "counting"}


def test_embedding_cache_embeds_each_text_once(tmp_path: Path) -> None:
    e = _CountingEmbedder()
    first = embed_texts(["aa", "b", "aa"], e, cache_dir=tmp_path, progress=False)
    assert e.seen == ["aa", "b"]
    again = embed_texts(["b", "ccc", "aa"], e, cache_dir=tmp_path, progress=False)
    assert e.seen == ["aa", "b", "ccc"]
    assert first[0].tolist() == [2.0, 2.0, 1.0]
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])
