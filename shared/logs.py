"""Logging set-up: JSON lines in production, readable text on a terminal.

Log records carry context through ``extra={...}``; the JSON formatter emits every extra field.
Keys that look like secrets are masked, and every URL in a line loses its userinfo, query and
fragment (``shared.urls``), as a second line of defence (callers never log secrets).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from shared.urls import scrub_urls, scrub_values

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET_HINTS = ("secret", "password", "credential", "token", "apikey", "api_key", "authorization")


def _mask(key: str, value: Any) -> Any:
    if any(h in key.lower() for h in _SECRET_HINTS):
        return "***"
    return scrub_values(list(value) if isinstance(value, tuple) else value)


def _as_text(value: Any) -> str:
    """What ``json.dumps`` writes for a value it cannot encode: its text, URLs cleaned."""
    return scrub_urls(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's extra fields as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub_urls(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = _mask(key, value)
        if record.exc_info:
            payload["exc"] = scrub_urls(self.formatException(record.exc_info))
        # Values are cleaned before encoding: cleaning the line could eat a JSON escape.
        return json.dumps(payload, default=_as_text)


class TextFormatter(logging.Formatter):
    """Human-readable line with extra fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(
            f"{k}={_mask(k, v)}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        return scrub_urls(f"{base} {extras}" if extras else base)


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if use_json else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiormq/aio-pika are chatty at INFO on reconnects; keep their warnings.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
