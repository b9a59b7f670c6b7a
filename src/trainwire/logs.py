"""Logging: the library hands structured records to stdlib ``logging``; the application decides where they go.

Every record goes to the standard library's ``trainwire`` logger, with its fields (and the run
id, bound by ``trainwire.containers.run``) in the record's message, an ``Event``. The library
adds no handler and never configures structlog globally (ADR 0021): with no logging configured,
Python drops info records and prints warnings on stderr through its last-resort handler;
``logging.basicConfig()`` prints them as ``event key=value ...``. The CLI calls ``configure``,
which renders them as console lines or JSON on stderr: stdout is left to data (``--cfg``,
``compare``, ``evaluate --json``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

LOGGER_NAME = "trainwire"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "console", "json")
_CLI_HANDLER = "trainwire-cli"


class Event(dict):
    """A record's fields, ``event`` first; ``str()`` is ``event key=value ...`` for plain formatters."""

    def __str__(self) -> str:
        fields = " ".join(f"{key}={value}" for key, value in self.items() if key != "event")
        return f"{self.get('event', '')} {fields}".rstrip()


def _to_stdlib(logger: logging.Logger, method_name: str, event_dict: Mapping[str, Any]) -> tuple[tuple, dict]:
    # The message is the fields themselves, marked as structlog's ProcessorFormatter expects
    # (``wrap_for_formatter`` does the same with a plain dict), so the CLI can render them.
    return (Event(event_dict),), {"extra": {"_logger": logger, "_name": method_name}}


def get_logger(**context: Any) -> Any:
    """A structlog logger that writes to stdlib's ``trainwire`` logger; ``context`` is bound to every record.

    Structlog contextvars bound by the caller (a request id, the run id) are merged into each
    record. Records below the ``trainwire`` logger's effective level cost one level check.
    """
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=[structlog.stdlib.filter_by_level, structlog.contextvars.merge_contextvars, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
        **context,
    )


SIGNIFICANT = 4  # digits of a float on a console line: a person reads 0.1699, the record keeps every digit


class _Console(logging.StreamHandler):
    """A StreamHandler that writes each record above the progress bars on its terminal, not onto them.

    A bar exists only once tqdm is imported (by ``trainwire.sinks.progress``); this module never imports it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        std = sys.modules.get("tqdm.std")
        if std is None or not getattr(std.tqdm, "_instances", None):
            super().emit(record)
            return
        try:
            message = self.format(record)
            with std.tqdm.external_write_mode(file=self.stream):  # clears the bars, then draws them again below
                self.stream.write(message + self.terminator)
                self.flush()
        except Exception:
            self.handleError(record)


def _ordered(first: str | None) -> Any:
    """A processor: ``epoch`` and ``step`` first, then ``first`` (the monitored metric), then the rest as logged,
    timings (``time/``) last."""
    lead = ("event", "stage", "epoch", "step", *((first,) if first else ()))

    def order(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        ordered = {key: event_dict[key] for key in lead if key in event_dict}
        ordered.update((key, value) for key, value in event_dict.items() if not key.startswith("time/"))
        ordered.update(event_dict)
        return ordered

    return order


def _rounded(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A processor for console lines: every float to ``SIGNIFICANT`` significant digits."""
    return {key: float(f"{value:.{SIGNIFICANT}g}") if type(value) is float else value
            for key, value in event_dict.items()}


def configure(format: str = "auto", level: str = "info", *, first: str | None = None, **context: str) -> None:
    """For the CLI: console lines on a terminal, one JSON object a line otherwise (or as asked), on stderr.

    Installs one handler on the ``trainwire`` logger (replacing the one a previous call installed;
    records do not also propagate to Hydra's root handlers) and binds ``context`` to every record.
    A record's fields come as logged, with ``epoch``, ``step`` and ``first`` (the monitored metric)
    leading; console lines round floats to 4 significant digits (the run record keeps them whole).
    Lines are written above a progress bar on the same terminal (``progress=``), not onto it.
    """
    from trainwire.errors import ConfigError

    if format not in FORMATS:
        raise ConfigError(f"log.format={format!r} is not one of {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ConfigError(f"log.level={level!r} is not one of {', '.join(LEVELS)}")
    stream = sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    human = format == "console" or (format == "auto" and terminal)
    renderer = (structlog.dev.ConsoleRenderer(colors=terminal, sort_keys=False) if human
                else structlog.processors.JSONRenderer())
    handler = _Console(stream)
    handler.name = _CLI_HANDLER
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        _ordered(first),
        *([_rounded] if human else []),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]))
    logger = logging.getLogger(LOGGER_NAME)
    for previous in [h for h in logger.handlers if h.name == _CLI_HANDLER]:
        logger.removeHandler(previous)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    structlog.contextvars.bind_contextvars(**context)
