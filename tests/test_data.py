"""The routing data shipped in data/: present, unchanged, and what the defaults read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service_helpers import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_data_matches_its_checksums() -> None:
    res = subprocess.run(
        [sys.executable, str(DATA_DIR / "make_data.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_defaults_read_the_shipped_data_not_a_folder_beside_the_repository() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "DATA ?= data/llmrouter_14tasks.parquet" in makefile
    assert (ROOT / "data" / "llmrouter_14tasks.parquet").is_file()
    for path in [ROOT / "Makefile", ROOT / "deploy" / "banditroute.toml", *ROOT.glob("tests/*.py")]:
        if path.name != "test_data.py":
            text = path.read_text()
            assert "../shared" not in text and '"shared" / "data"' not in text, path
