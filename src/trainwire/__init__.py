"""trainwire: a thin PyTorch trainer whose every decision is a swappable strategy.

Importing trainwire imports torch and nothing heavy beyond it: wandb, tensorboard and mlflow are
imported only when their sink is built; Hydra and dependency-injector only by the config and container.
"""

from trainwire.checkpointing.parts import Stateful
from trainwire.checkpointing.store import CheckpointStore, LocalCheckpointStore
from trainwire.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteError,
    TrainingInterrupted,
)
from trainwire.loop.hooks import Hook
from trainwire.loop.signals import StopToken
from trainwire.loop.steps import Step, StepContext, StepResult, SupervisedStep
from trainwire.loop.trainer import FitResult, Trainer, TrainerSettings, TrainState
from trainwire.policies.cadence import Cadence, CheckpointPolicy
from trainwire.policies.gradients import (
    GradientPolicy,
    GradStats,
    NoClip,
    NormClipper,
    ValueClipper,
)
from trainwire.policies.lr import (
    Constant,
    CosineWarmRestarts,
    LRPolicy,
    ReduceOnPlateau,
    WarmupCosine,
)
from trainwire.policies.nonfinite import (
    IgnoreNonFinite,
    NonFinitePolicy,
    RaiseOnNonFinite,
    SkipNonFinite,
)
from trainwire.policies.objectives import Classification, Objective, Regression
from trainwire.policies.stopping import (
    NeverStop,
    PatienceStopper,
    StoppingPolicy,
    Verdict,
)
from trainwire.sinks import (
    FanOut,
    GuardedFanOut,
    IsolatedSink,
    JsonlSink,
    MetricsSink,
    NullSink,
)

__version__ = "0.1.0"

__all__ = [
    "Cadence", "CheckpointError", "CheckpointPolicy", "CheckpointStore", "Classification", "ConfigError", "Constant", "CosineWarmRestarts", "FanOut",
    "FitResult", "GradStats", "GradientPolicy", "GuardedFanOut", "Hook", "IsolatedSink", "JsonlSink", "LRPolicy",
    "IgnoreNonFinite", "LocalCheckpointStore", "MLflowSink", "MetricsSink", "NeverStop", "NonFiniteError",
    "NonFinitePolicy", "NoClip", "NormClipper", "NullSink", "Objective", "PatienceStopper", "RaiseOnNonFinite",
    "ReduceOnPlateau", "Regression", "SkipNonFinite", "Stateful", "Step", "StepContext", "StepResult", "StopToken",
    "StoppingPolicy", "SupervisedStep", "TensorBoardSink",
    "TrainState", "Trainer", "TrainerSettings", "TrainingInterrupted", "ValueClipper",
    "Verdict", "WandbSink", "WarmupCosine",
]


def __getattr__(name: str):
    if name in ("WandbSink", "TensorBoardSink", "MLflowSink"):
        from trainwire import sinks

        return getattr(sinks, name)
    raise AttributeError(f"module 'trainwire' has no attribute {name!r}")
