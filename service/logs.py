"""Log lines as JSON objects, one a line, for log collectors (Loki, Elasticsearch,
Cloud Logging) that index fields rather than grep text.

Each line carries time (UTC, ISO 8601 with milliseconds), level, logger and message,
then every `extra=` field the call passed (`event_id`, `policy`, `owner`, ...), and
the traceback as `exc` when there is one. Chosen by `log_format = "json"` in the
config (BANDITROUTE_LOG_FORMAT) or `--log-json` on `serve` and `learner`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# what every LogRecord has: anything else on a record came from `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (uvicorn's access records: their args as fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(fmt: LogFormat, level: int | str = logging.INFO) -> None:
    """Send the root logger's records to stderr in `fmt`, replacing its handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def uvicorn_config(fmt: LogFormat, level: str = "info") -> dict[str, Any] | None:
    """uvicorn's `log_config` for `fmt`: None keeps uvicorn's own for text; for JSON,
    uvicorn's loggers and ours (banditroute.*) all through one JSON handler, in every
    worker process (uvicorn applies it in each)."""
    if fmt != "json":
        return None
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["json"], "level": lvl, "propagate": False},
        },
        "root": {"handlers": ["json"], "level": lvl},
    }
