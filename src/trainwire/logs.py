"""Logging: the library hands structured records to stdlib ``logging``; the application decides where they go.

Every record goes to the standard library's ``trainwire`` logger, with its fields (and the run
id, bound by ``trainwire.containers.run``) in the record's message, an ``Event``. The library
adds no handler and never configures structlog globally (ADR 0021): with no logging configured,
Python drops info records and prints warnings on stderr through its last-resort handler;
``logging.basicConfig()`` prints them as ``event key=value ...``. The CLI calls ``configure``,
which renders them as console lines or JSON on stdout.
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


def configure(format: str = "auto", level: str = "info", **context: str) -> None:
    """For the CLI: console lines on a terminal, one JSON object a line otherwise (or as asked), on stdout.

    Installs one handler on the ``trainwire`` logger (replacing the one a previous call installed;
    records do not also propagate to Hydra's root handlers) and binds ``context`` to every record.
    """
    from trainwire.errors import ConfigError

    if format not in FORMATS:
        raise ConfigError(f"log.format={format!r} is not one of {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ConfigError(f"log.level={level!r} is not one of {', '.join(LEVELS)}")
    human = format == "console" or (format == "auto" and sys.stdout.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if human else structlog.processors.JSONRenderer()
    handler = logging.StreamHandler(sys.stdout)
    handler.name = _CLI_HANDLER
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
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
