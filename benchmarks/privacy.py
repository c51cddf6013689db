"""Sensitive-data detection: per-entity recall and precision on the labelled synthetic
set (service/privacy/synthetic.py), overall precision, the false findings by what
they hit, and detect() latency on 500-character queries with and without an
identifier. Prints markdown tables.

A finding is true when its span overlaps a labelled span of the same entity; a
labelled span is found when a finding of its entity overlaps it.

Goals (issue 15): recall >= 0.99 for payment cards, e-mails and API keys; precision
>= 0.95 overall; <= 0.2 ms p50 for a 500-character query.

Run: python -m benchmarks.privacy [--texts 5000] [--seed 0] [--latency-texts 1000]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from service.privacy.detect import ENTITIES, PatternDetector
from service.privacy.synthetic import evaluate, generate, sized

RECALL_GOAL = {"payment_card": 0.99, "email": 0.99, "api_key": 0.99}
PRECISION_GOAL = 0.95
P50_GOAL_MS = 0.2


def latency_ms(detector: PatternDetector, texts: list[str], rounds: int) -> tuple[float, float]:
    """p50 and p99 of one detect() call, in milliseconds, over `rounds` passes."""
    for t in texts[:50]:
        detector.detect(t)  # warm up
    times = np.empty(len(texts) * rounds)
    k = 0
    gc.disable()
    try:
        for _ in range(rounds):
            for t in texts:
                t0 = time.perf_counter_ns()
                detector.detect(t)
                times[k] = time.perf_counter_ns() - t0
                k += 1
    finally:
        gc.enable()
    return float(np.percentile(times, 50) / 1e6), float(np.percentile(times, 99) / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-texts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    detector = PatternDetector()
    data = generate(args.texts, args.seed)
    scores, false_by = evaluate(detector.detect, data)
    n_chars = sum(len(d.text) for d in data)
    n_labels = sum(len(d.spans) for d in data)
    n_negs = sum(len(d.negatives) for d in data)
    print(
        f"## Detection on {args.texts} generated texts (seed {args.seed}; {n_chars / len(data):.0f}"
        f" characters on average; {n_labels} labelled identifiers, {n_negs} hard negatives)\n"
    )
    print("| entity | labelled | recall | findings | precision | recall goal |")
    print("|---|---:|---:|---:|---:|---|")
    tot_true = tot_false = 0
    for e in ENTITIES:
        sc = scores.get(e)
        if sc is None:
            continue
        tot_true += sc.true
        tot_false += sc.false
        goal = RECALL_GOAL.get(e)
        mark = "" if goal is None else f">= {goal} {'met' if sc.recall >= goal else 'MISSED'}"
        print(
            f"| {e} | {sc.found + sc.missed} | {sc.recall:.4f} | {sc.true + sc.false} |"
            f" {sc.precision:.4f} | {mark} |"
        )
    overall = tot_true / max(tot_true + tot_false, 1)
    verdict = "met" if overall >= PRECISION_GOAL else "MISSED"
    print(
        f"| **all** | {n_labels} | {sum(s.found for s in scores.values()) / max(n_labels, 1):.4f}"
        f" | {tot_true + tot_false} | **{overall:.4f}** | precision >= {PRECISION_GOAL} {verdict} |"
    )
    if false_by:
        print("\nFalse findings by what they hit (entity <- hard negative / other label):\n")
        print("| false finding | count |")
        print("|---|---:|")
        for k, v in sorted(false_by.items(), key=lambda kv: -kv[1]):
            print(f"| {k} | {v} |")

    print(
        f"\n## detect() latency, 500-character queries"
        f" ({args.latency_texts} texts x {args.rounds})\n"
    )
    print("| query | p50 ms | p99 ms | p50 goal |")
    print("|---|---:|---:|---|")
    for label, with_id in (("with one identifier", True), ("hard negatives only", False)):
        texts = sized(args.latency_texts, args.seed + 1, 500, with_identifier=with_id)
        p50, p99 = latency_ms(detector, texts, args.rounds)
        ok = "met" if p50 <= P50_GOAL_MS else "MISSED"
        print(f"| {label} | {p50:.4f} | {p99:.4f} | <= {P50_GOAL_MS} {ok} |")
    plain = ["Could you check what is going on with the dashboard? " * 10][0][:500]
    p50, p99 = latency_ms(detector, [plain] * 200, args.rounds)
    print(f"| prose, no digits | {p50:.4f} | {p99:.4f} | <= {P50_GOAL_MS} |")


if __name__ == "__main__":
    main()
