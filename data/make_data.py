"""Rebuild data/ from the published routing tables, and check it.

    python data/make_data.py --source DIR   # copy the tables from DIR, write SHA256SUMS
    python data/make_data.py --check        # verify the shipped files against SHA256SUMS

DIR holds the tables as assembled from their upstream repositories (see README.md
here for provenance and licences). The files are copied byte for byte, not sliced:
the whole llmrouter table is 1.3 MB and `make run` replays all of it, so the
figures in the top-level README reproduce from a bare clone.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = (
    "llmrouter_14tasks.parquet",
    "llmrouter_14tasks_prices.csv",
    "routerbench_arc_mbpp_winogrande.parquet",
)
SUMS = HERE / "SHA256SUMS"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--source", type=Path, help="folder holding the upstream tables")
    group.add_argument("--check", action="store_true", help="verify data/ against SHA256SUMS")
    args = ap.parse_args(argv)
    if args.source is not None:
        for name in FILES:
            shutil.copyfile(args.source / name, HERE / name)
        SUMS.write_text("".join(f"{sha256(HERE / n)}  {n}\n" for n in FILES))
        print(f"copied {len(FILES)} files from {args.source}; wrote {SUMS.name}")
        return 0
    bad = []
    for line in SUMS.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = HERE / name
        if not path.is_file() or sha256(path) != digest:
            bad.append(name)
    if bad:
        print(f"data/: missing or changed: {', '.join(bad)}", file=sys.stderr)
        return 1
    print("data/: every file matches SHA256SUMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
