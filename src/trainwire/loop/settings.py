"""``TrainerSettings``: how the loop runs, and the schema of the ``trainer`` config group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from trainwire.errors import ConfigError
from trainwire.policies.nonfinite import NONFINITE
from trainwire.runtime.compiling import Compiler
from trainwire.runtime.distributed import STRATEGIES
from trainwire.runtime.health import GradientHealth, GradientMonitor
from trainwire.runtime.throughput import Throughput


@dataclass
class TrainerSettings:
    """How the loop runs; also the schema of the ``trainer`` config group."""

    max_epochs: int = 60
    accumulate_steps: int = 1
    precision: str = "32"
    log_every_n_steps: int = 10
    device: str = "auto"
    checkpoint_every: int = 10  # epochs between periodic epoch-XXXX.pt (last.pt is written every epoch)
    checkpoint_every_n_steps: Optional[int] = None  # also write last.pt every n optimizer steps
    keep_last: int = 3  # periodic checkpoints kept
    resume: Optional[str] = None  # null, "auto" (newest valid checkpoint, else fresh) or a checkpoint path
    # A non-finite loss or gradient: skip the step, or raise. Checking reads the grad norm on every
    # optimizer step (on CUDA, one device sync a step); "off" checks nothing and never syncs.
    nonfinite: str = "skip"
    max_nonfinite: int = 10  # consecutive skipped steps that end the run
    # auto: ddp when a process group is initialised (the CLI under torchrun), else single; or single, ddp, fsdp.
    strategy: str = "auto"
    compile: bool = False  # torch.compile what runs forward, once, before the optimizers are built (ADR 0019)
    compile_mode: Optional[str] = None  # null (torch's default), reduce-overhead, max-autotune, ...
    peak_tflops: Optional[float] = None  # the device's peak for time/mfu (null: known GPUs' bf16 dense peak)
    watch_every_n_steps: Optional[int] = None  # grad_norm/<module>, param_norm/<module> and histograms (null: off)
    grad_monitor: bool = True  # warn once (and count) when the total grad norm vanishes or explodes
    grad_vanishing_norm: float = 1e-7  # vanishing: the norm below this ...
    grad_vanishing_steps: int = 20  # ... for this many optimizer steps in a row
    grad_exploding_factor: float = 10.0  # exploding: the norm above this times the median of the last 100
    # Write checkpoints in the background: the loop waits only for a copy of the state (ADR 0009).
    async_checkpoint: bool = True

    def __post_init__(self) -> None:
        for key in ("max_epochs", "accumulate_steps", "log_every_n_steps", "checkpoint_every", "keep_last",
                    "max_nonfinite", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if not (value is None and key == "checkpoint_every_n_steps") and (type(value) is not int or value < 1):
                raise ConfigError(f"trainer.{key}={value!r} must be an integer >= 1")
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"trainer.nonfinite={self.nonfinite!r} is not one of {', '.join(NONFINITE)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not isinstance(self.async_checkpoint, bool):
            raise ConfigError(f"trainer.async_checkpoint={self.async_checkpoint!r} must be true or false")
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume.strip()):
            raise ConfigError(f"trainer.resume={self.resume!r} must be null, 'auto' or a checkpoint path")
        for key in ("compile", "grad_monitor"):
            if type(getattr(self, key)) is not bool:
                raise ConfigError(f"trainer.{key}={getattr(self, key)!r} must be true or false")
        # Built once here so that a wrong value fails with its key named, before any work.
        Compiler(self.compile_mode)
        Throughput(self.peak_tflops)
        gradient_health(self)


def gradient_health(settings: TrainerSettings) -> GradientHealth:
    """The gradient monitor and watch that ``settings`` ask for."""
    monitor = GradientMonitor(settings.grad_vanishing_norm, settings.grad_vanishing_steps,
                              settings.grad_exploding_factor)
    return GradientHealth(monitor if settings.grad_monitor else None, settings.watch_every_n_steps)
