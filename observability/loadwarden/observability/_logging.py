"""Process-wide logging setup for the ``loadwarden`` command: text lines or JSON objects."""

from __future__ import annotations

import datetime
import json
import logging
import sys

from opentelemetry import trace

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``exception`` when there is one, and ``trace_id`` / ``span_id`` (hex, as
    trace backends show them) when the record was logged inside a valid span."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", format: str = "text") -> None:
    """Sends log records of ``level`` and above to stderr, one line each.

    Args:
        level: One of DEBUG, INFO, WARNING, ERROR.
        format: ``text`` or ``json`` (see ``JsonFormatter``).

    Raises:
        ValueError: ``level`` or ``format`` is not one of those.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
