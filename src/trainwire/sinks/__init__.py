"""Metrics sinks: the MetricsSink port and where metrics can go."""

from trainwire.sinks.base import FanOut, MetricsSink, NullSink
from trainwire.sinks.jsonl import JsonlSink

__all__ = ["FanOut", "JsonlSink", "MetricsSink", "NullSink", "WandbSink"]


def __getattr__(name: str):
    # WandbSink's module is light, but keeping it out of the import path makes "wandb is
    # never imported unless used" easy to see.
    if name == "WandbSink":
        from trainwire.sinks.wandb import WandbSink

        return WandbSink
    raise AttributeError(name)
