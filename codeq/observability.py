"""Logging setup: structlog, JSON in production, readable in a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _json(event: Any, **_: Any) -> str:
    """structlog's JSON serializer: orjson, several times faster than the standard
    library's on the access-log hot path; what it cannot encode is shown as repr()."""
    return orjson.dumps(event, default=repr).decode()


class ClientErrorFilter(logging.Filter):
    """aiohttp's server logs a request it could not parse (a malformed request line,
    bad header bytes, a client gone mid-request) at error level with a traceback:
    one per hostile packet. Those are the client's errors: one warning line, no
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp") and record.exc_info:
            error = record.exc_info[1]
            if isinstance(error, HttpProcessingError | ConnectionError):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg = "malformed or broken HTTP request: %s"
                text = getattr(error, "message", "") or str(error) or type(error).__name__
                record.args = (" ".join(str(text).split())[:200],)
                record.exc_info = record.exc_text = None
        return True


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Routes structlog (and stdlib logging) to stderr as JSON lines or console text."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write per line (print() writes the newline separately), so the lines of
        # several processes sharing stderr (codeq serve --workers N) never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: render their records the same way,
    # so a JSON log holds JSON lines only.
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ClientErrorFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    numeric = _LEVELS.get(level, logging.INFO)
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # The store client's debug chatter (per connection) is noise even at debug.
    logging.getLogger("redis").setLevel(max(numeric, logging.INFO))


class LogBudget:
    """At most `per_minute` lines of one kind a minute: `allow()` says whether this
    one may be written, and `suppressed()` how many were left out before it (to be
    named on the next line written), so a burst costs a few lines, not thousands."""

    def __init__(self, per_minute: int = 60) -> None:
        self.per_minute = per_minute
        self._window_start = 0.0
        self._written = 0
        self._left_out = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._written = now, 0
        if self._written < self.per_minute:
            self._written += 1
            return True
        self._left_out += 1
        return False

    def suppressed(self) -> int:
        """How many lines were left out since the last one written (and resets it)."""
        left_out, self._left_out = self._left_out, 0
        return left_out
