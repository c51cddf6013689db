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
import os
import time

import numpy as np

from service.privacy.detect import ENTITIES, PatternDetector
from service.privacy.synthetic import evaluate, generate, sized

# Hand-written formats the generator did not produce when they were written (text, the
# entity it carries or None for a negative). They show what the synthetic figures
# cannot: coverage of formats nobody put in the generator. The first set found 24 of
# 42 on its first run; the formats it missed were then added to the detector and the
# generator, except the national ids of other countries (still missed, on purpose).
OUT_OF_GENERATOR: list[tuple[str, str | None]] = [
    ("JOHN.SMITH@EXAMPLE.COM wrote", "email"),
    ("reach me at j.smith@[192.168.1.1]", "email"),
    ("email: müller@beispiel.de", "email"),
    ("phone +1.415.555.0132", "phone"),
    ("Tel. (030) 1234 5678", "phone"),
    ("from abroad 0044 20 7946 0958", "phone"),
    ("+49 (0) 30 12345678", "phone"),
    ("call 415 555 0132 ext 12", "phone"),
    ("card 4111.1111.1111.1111", "payment_card"),
    ("cc#4111111111111111", "payment_card"),
    ("card no: 4111-1111-1111-1111", "payment_card"),
    ("iban de89 3704 0044 0532 0130 00", "iban"),
    ("IBAN DE89-3704-0044-0532-0130-00", "iban"),
    ("SSN#123-45-6789", "national_id"),
    ("ssn: 123.45.6789", "national_id"),
    ("NHS number 943 476 5919", "national_id"),
    ("Steuer-ID 65929970489", "national_id"),
    ("codice fiscale RSSMRA85T10A562S", "national_id"),
    ("link-local fe80::1%eth0", "ip_address"),
    ("allow 10.0.0.0/8", "ip_address"),
    ("HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "api_key"),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 is my hugging face token", "api_key"),
    ("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", "api_key"),
    ("npm_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ", "api_key"),
    ("postgres://admin:S3cretPass@db.internal:5432/app", "secret"),
    ("the wifi password is 'correct horse battery staple'", "secret"),
    ("password=hunter2", "secret"),
    ("-----BEGIN PGP PRIVATE KEY BLOCK-----", "secret"),
    ("Visa ending in 1111", None),
    ("Call 1-800-FLOWERS", None),
    ("serial number 1234 5678 9012 3456", None),
    ("GUID {3F2504E0-4F89-11D3-9A0C-0305E82C3301}", None),
    ("md5 d41d8cd98f00b204e9800998ecf8427e", None),
    ("Room 101, floor 2, building 7 on 5th Ave, 10001", None),
    ("Transaction hash 0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060", None),
    ("the api key rotation is scheduled for 2024-06-01", None),
    ("Use the token <YOUR_TOKEN_HERE>", None),
    ("Bearer token expired: 401 Unauthorized", None),
    ("phone model iPhone 15 Pro, IMEI 356938035643809", None),
    ("PO Box 12345, account 12345678, sort code 12-34-56", None),
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host", None),
    ("lat/long 48.8566, 2.3522; 1,234,567 rows", None),
    # a second set, written later (first run: 39 of 40; the URL's token came out as
    # an e-mail)
    ("Hi, I'm Anna (anna.k@web.de), my order didn't arrive", "email"),
    ("contact: support+billing@shop.example.co.jp", "email"),
    ("my cell is 555-867-5309", "phone"),
    ("reach me on +353 87 123 4567", "phone"),
    ("Tel +39 06 6982 1234", "phone"),
    ("ph: 0412 345 678 (AU mobile)", "phone"),
    ("call 020-7946-0958 tomorrow", "phone"),
    ("WhatsApp: +55 11 91234-5678", "phone"),
    ("paid with 5105 1051 0510 5100, exp 04/26", "payment_card"),
    ("Card number: 6011-0009-9013-9424", "payment_card"),
    ("amex 371449635398431 cvv 1234", "payment_card"),
    ("number 4012888888881881 please charge it", "payment_card"),
    ("bank: BE68 5390 0754 7034", "iban"),
    ("send to CH93 0076 2011 6238 5295 7", "iban"),
    ("Konto IBAN AT611904300234573201", "iban"),
    ("SSN is 078-05-1121", "national_id"),
    ("my NI no is QQ123456C", None),  # QQ: the prefix HMRC never issues
    ("NINO: JG 10 37 82 A", "national_id"),
    ("DNI: 45678912-L", None),  # the control letter of 45678912 is S
    ("server 172.16.254.1 refused", "ip_address"),
    ("curl http://203.0.113.50:3000/health", "ip_address"),
    ("inet6 2a00:1450:4001:82a::200e", "ip_address"),
    ("ANTHROPIC_API_KEY=sk-ant-api03-" + "AbCdEf0123456789" * 6 + "-AbCdEfAA", "api_key"),
    (
        "git remote set-url origin https://ghp_aBcD1234EfGh5678IjKl9012MnOp3456QrSt@github.com/o",
        "api_key",
    ),
    ("slack: xoxp-1234567890-1234567890-1234567890-abcdef0123456789abcdef0123456789", "api_key"),
    ("export AWS_SECRET_ACCESS_KEY=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY", "secret"),
    ("DATABASE_URL=mysql://root:Pa55w0rd!@127.0.0.1/db", "secret"),
    ("my gmail password is Tigers2019", "secret"),
    ("session token: 8f14e45fceea167a5a36dedd4bea2543", "secret"),
    ("Version 2.4.1.0 released on 2024-01-15", None),
    ("Order #4111-1111-1111-1111 confirmed", None),
    ("price 1.234.567,89 EUR; qty 12 345 678", None),
    ("timestamp 1700000000123 and nonce 4829104829", None),
    ("the meeting id is 845 2931 4456", None),
    ("reference 2024-000123-45 and ticket INC0012345", None),
    ("git sha 9fceb02d0ae598e95dc970b74767f19372d61af8 merged", None),
    ("use key id kid_2024_rotation_primary for signing", None),
    ("see RFC 7519 section 4.1.3 and ISO 8601", None),
    ("password must be at least 8 characters", None),
    ("token limit is 128000 tokens per request", None),
]

RECALL_GOAL = {"payment_card": 0.99, "email": 0.99, "api_key": 0.99}
PRECISION_GOAL = 0.95
P50_GOAL_MS = 0.2


def latency_ms(
    detector: PatternDetector, texts: list[str], rounds: int
) -> tuple[float, float, float, float]:
    """p50 and p99 of one detect() call in milliseconds over `rounds` passes, and p50
    and p99 of each text's fastest call (what the code costs without the scheduler:
    on a busy machine a preempted call adds a time slice to the raw p99)."""
    for t in texts[:50]:
        detector.detect(t)  # warm up
    times = np.empty((rounds, len(texts)))
    gc.disable()
    try:
        for r in range(rounds):
            for k, t in enumerate(texts):
                t0 = time.perf_counter_ns()
                detector.detect(t)
                times[r, k] = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    fastest = times.min(axis=0)
    return (
        float(np.percentile(times, 50) / 1e6),
        float(np.percentile(times, 99) / 1e6),
        float(np.percentile(fastest, 50) / 1e6),
        float(np.percentile(fastest, 99) / 1e6),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-texts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
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

    print("\n## Hand-written formats outside the generator\n")
    print("| text | carries | found | verdict |")
    print("|---|---|---|---|")
    hits = 0
    for text, want in OUT_OF_GENERATOR:
        got = sorted(detector.entities_in(text))
        ok = (want in got) if want else not got
        hits += ok
        shown = text if len(text) <= 60 else text[:57] + "..."
        verdict = "ok" if ok else ("MISSED" if want else "FALSE")
        print(f"| `{shown}` | {want or '-'} | {', '.join(got) or '-'} | {verdict} |")
    print(f"\n{hits} of {len(OUT_OF_GENERATOR)} as expected.")

    load = os.getloadavg()[0]
    print(
        f"\n## detect() latency, 500-character queries"
        f" ({args.latency_texts} texts x {args.rounds}; one thread; load average"
        f" {load:.1f} on {os.cpu_count()} CPUs while measuring)\n"
    )
    print("| query | p50 ms | p99 ms | fastest of each text: p50 ms | p99 ms | p50 goal |")
    print("|---|---:|---:|---:|---:|---|")
    for label, with_id in (("with one identifier", True), ("hard negatives only", False)):
        texts = sized(args.latency_texts, args.seed + 1, 500, with_identifier=with_id)
        p50, p99, f50, f99 = latency_ms(detector, texts, args.rounds)
        met = "met" if p50 <= P50_GOAL_MS else "MISSED"
        print(
            f"| {label} | {p50:.4f} | {p99:.4f} | {f50:.4f} | {f99:.4f} | <= {P50_GOAL_MS} {met} |"
        )
    plain = ("Could you check what is going on with the dashboard? " * 10)[:500]
    p50, p99, f50, f99 = latency_ms(detector, [plain] * 200, args.rounds)
    print(f"| prose, no digits | {p50:.4f} | {p99:.4f} | {f50:.4f} | {f99:.4f} | |")


if __name__ == "__main__":
    main()
