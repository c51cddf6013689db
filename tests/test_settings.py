"""Configuration: the shipped sample loads, YAML works like TOML, the environment wins,
and a bad config is refused naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import load_settings

SAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "banditroute.toml"


def test_the_sample_config_loads() -> None:
    s = load_settings(SAMPLE)
    assert len(s.models) == 9 and s.fallback_model == "llama-3.1-8b-instruct"
    assert set(s.policies) == {"default", "thompson", "thompson_shadow", "today"}
    assert s.policies["thompson_shadow"].shadow_of == "default"
    assert [v.policy for v in s.experiments[0].variants] == ["today", "default"]
    assert s.redis_url is None  # the embedded default


def test_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n  - {name: a, input_per_m: 1, output_per_m: 2}\n"
        "policies:\n  p: {kind: thompson, params: {v: 0.2}}\n"
        "default_policy: p\n"
    )
    s = load_settings(cfg)
    assert s.models[0].output_per_m == 2 and s.policies["p"].params == {"v": 0.2}
    monkeypatch.setenv("BANDITROUTE_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("BANDITROUTE_CONFIG_PATH", str(cfg))  # set by `serve`; not a setting
    assert load_settings(cfg).redis_url == "redis://example:6379/1"


def test_bad_configs_name_the_setting(tmp_path: Path) -> None:
    cases = {
        'default_policy = "nope"\n': "default_policy",
        "snapshot_every_n = 0\n": "snapshot_every_n",
        'fallback_model = "zz"\n[[models]]\nname = "a"\ninput_per_m = 1\noutput_per_m = 1\n': (
            "fallback_model"
        ),
        "unknown_setting = 1\n": "unknown_setting",
    }
    for text, needle in cases.items():
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        with pytest.raises(ValidationError, match=needle):
            load_settings(cfg)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")
