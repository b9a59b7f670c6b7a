"""Metrics sinks: the MetricsSink port, where metrics can go (the run record, trackers, a progress bar,
sample images), the isolation that keeps a failing tracker from ending a run, and stages."""

from trainwire.sinks.base import FanOut, MetricsSink, NullSink
from trainwire.sinks.isolation import GuardedFanOut, IsolatedSink
from trainwire.sinks.jsonl import JsonlSink
from trainwire.sinks.stages import PrefixedSink, Stages

__all__ = [
    "FanOut", "GuardedFanOut", "IsolatedSink", "JsonlSink", "MLflowSink", "MetricsSink", "NullSink",
    "PrefixedSink", "Stages", "TensorBoardSink", "WandbSink",
]

# Their modules are light, but keeping them out of the import path makes "wandb, tensorboard
# and mlflow are never imported unless used" easy to see.
_LAZY = {
    "WandbSink": "trainwire.sinks.wandb",
    "TensorBoardSink": "trainwire.sinks.tensorboard",
    "MLflowSink": "trainwire.sinks.mlflow",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
