"""JSON log lines (service.logs): one object a line with time, level, logger and
message, every `extra=` field, and the traceback as `exc`."""

from __future__ import annotations

import json
import logging
import logging.config

import pytest

from service.logs import JsonFormatter, uvicorn_config


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "banditroute.learner", logging.WARNING, __file__, 1, "skip %s", ("e1",), None
    )
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_line_is_one_object_with_the_extra_fields() -> None:
    line = JsonFormatter().format(_record(event_id="default.abc", policy="default"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "banditroute.learner"
    assert out["message"] == "skip e1"
    assert out["event_id"] == "default.abc" and out["policy"] == "default"
    assert out["time"].endswith("+00:00")
    # nothing of the record's own machinery leaks in
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(out)


def test_a_traceback_is_one_field_and_odd_values_still_encode() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, True)
        import sys

        rec.exc_info = sys.exc_info()
    rec.blob = object()  # not JSON: written as its str, never a crash
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"] and "Traceback" in out["exc"]
    assert out["blob"].startswith("<object")


def test_uvicorn_config_routes_every_logger_through_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert uvicorn_config("text") is None
    cfg = uvicorn_config("json")
    assert cfg is not None
    # the loggers it configures, as they were: put back after, for the other tests
    names = [*cfg.get("loggers", {}), ""]
    saved = {
        n: (
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    }
    logging.config.dictConfig(cfg)
    try:
        logging.getLogger("uvicorn.error").warning("started", extra={"port": 8000})
        err = capsys.readouterr().err.strip().splitlines()
        assert json.loads(err[-1])["port"] == 8000
    finally:
        for n, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
