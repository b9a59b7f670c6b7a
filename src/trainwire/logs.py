"""Structured logging for the CLI. The library never calls this: embedding code configures its own."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "console", "json")


def configure(format: str = "auto", level: str = "info", **context: str) -> None:
    """Console lines on a terminal, one JSON object a line otherwise (or as asked); binds ``context``."""
    from trainwire.errors import ConfigError

    if format not in FORMATS:
        raise ConfigError(f"log.format={format!r} is not one of {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ConfigError(f"log.level={level!r} is not one of {', '.join(LEVELS)}")
    human = format == "console" or (format == "auto" and sys.stdout.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if human else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(**context)
