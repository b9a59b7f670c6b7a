"""trainwire: a thin PyTorch trainer whose every decision is a swappable strategy.

Importing trainwire imports torch and nothing heavy beyond it: wandb, tensorboard and mlflow are
imported only when their sink is built; Hydra and dependency-injector only by the config and container.
"""

from trainwire.checkpoints import CheckpointStore, LocalCheckpointStore
from trainwire.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted
from trainwire.gradients import GradientPolicy, GradStats, NoClip, NormClipper, ValueClipper
from trainwire.hooks import Hook
from trainwire.lr import Constant, CosineWarmRestarts, LRPolicy, ReduceOnPlateau, WarmupCosine
from trainwire.objectives import Classification, Objective, Regression
from trainwire.sinks import FanOut, GuardedFanOut, IsolatedSink, JsonlSink, MetricsSink, NullSink
from trainwire.stop import StopToken
from trainwire.stopping import NeverStop, PatienceStopper, StoppingPolicy, Verdict
from trainwire.trainer import FitResult, Trainer, TrainerSettings, TrainState

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "CheckpointStore", "Classification", "ConfigError", "Constant", "CosineWarmRestarts", "FanOut",
    "FitResult", "GradStats", "GradientPolicy", "GuardedFanOut", "Hook", "IsolatedSink", "JsonlSink", "LRPolicy",
    "LocalCheckpointStore", "MLflowSink", "MetricsSink", "NeverStop", "NonFiniteError", "NoClip", "NormClipper",
    "NullSink", "Objective", "PatienceStopper", "ReduceOnPlateau", "Regression", "StopToken", "StoppingPolicy",
    "TensorBoardSink", "TrainState", "Trainer", "TrainerSettings", "TrainingInterrupted", "ValueClipper",
    "Verdict", "WandbSink", "WarmupCosine",
]


def __getattr__(name: str):
    if name in ("WandbSink", "TensorBoardSink", "MLflowSink"):
        from trainwire import sinks

        return getattr(sinks, name)
    raise AttributeError(f"module 'trainwire' has no attribute {name!r}")
