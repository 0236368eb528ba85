"""Logging set-up: plain text (default) or one JSON object per line (``PREFSTREAM_LOG_FORMAT=json``).

JSON lines carry ``time``, ``level``, ``logger``, ``message``, the exception text if any, and
every ``extra=`` field a caller passed — failures pass ``topic``, ``partition``, ``offset``
(and ``agent``, ``error_type``), so a log pipeline can find the message that failed.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

from streams.settings import SettingsError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def check_format(fmt: str) -> str:
    fmt = (fmt or "text").strip().lower()
    if fmt not in FORMATS:
        raise SettingsError(f"PREFSTREAM_LOG_FORMAT={fmt!r} is not one of {', '.join(FORMATS)}; set one or unset it")
    return fmt


def dict_config(level: str = "INFO", fmt: str = "text") -> dict:
    """A ``logging.config.dictConfig`` mapping: one stderr handler with the chosen format.
    Also handed to faust's worker, which otherwise installs its own coloured handler."""
    formatter = ({"()": f"{__name__}.JsonFormatter"} if check_format(fmt) == "json"
                 else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for a CLI process (a no-op where logging is already set up, as
    ``logging.basicConfig`` is). A bad level or format is reported and the default used."""
    try:
        fmt = check_format(fmt)
        level = logging.getLevelName(level.strip().upper())
        if not isinstance(level, int):
            raise ValueError(f"PREFSTREAM_LOG_LEVEL={level!r} is not a logging level")
    except ValueError as e:
        fmt, level, problem = "text", logging.INFO, str(e)
    else:
        problem = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if problem:
        logging.getLogger(__name__).error("logging: %s; using text at INFO", problem)
