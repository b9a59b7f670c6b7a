"""``TrainerSettings``: what the loop itself reads, and the schema of the ``trainer`` config node.

A ``trainer.*`` key is defaulted and checked here, once: the loop and the runtime parts it
builds from these values (``Compiler``, ``Throughput``, ``GradientMonitor``, ``GradientHealth``)
take them as given. What has a choice of implementation is a config group of its own, whose
option's constructor is its schema and its one check (ADR 0025): the non-finite policy
(``nonfinite=``), the checkpoint cadence (``checkpoint.``), the strategy (``strategy=``) and the
step (``step=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from trainwire.errors import ConfigError
from trainwire.runtime.compiling import COMPILE_MODES
from trainwire.runtime.health import GradientHealth, GradientMonitor


@dataclass
class TrainerSettings:
    """How the loop runs; also the schema of the ``trainer`` config node."""

    max_epochs: int = 60
    accumulate_steps: int = 1
    precision: str = "32"
    log_every_n_steps: int = 10
    device: str = "auto"
    resume: Optional[str] = None  # null, "auto" (newest valid checkpoint, else fresh) or a checkpoint path
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
    # A new run's first weights (a run folder's best, a checkpoint, a state dict, a .safetensors file); weights only.
    init_from: Optional[str] = None
    init_strict: bool = True  # the model and the weights have the same keys and shapes (false: load those that fit)

    def __post_init__(self) -> None:
        for key in ("max_epochs", "accumulate_steps", "log_every_n_steps", "grad_vanishing_steps"):
            _require(key, getattr(self, key), type(getattr(self, key)) is int and getattr(self, key) >= 1,
                     "an integer >= 1")
        _require("watch_every_n_steps", self.watch_every_n_steps, self.watch_every_n_steps is None or (
            type(self.watch_every_n_steps) is int and self.watch_every_n_steps >= 1), "null or an integer >= 1")
        for key in ("compile", "grad_monitor", "async_checkpoint", "init_strict"):
            _require(key, getattr(self, key), type(getattr(self, key)) is bool, "true or false")
        _require("resume", self.resume, self.resume is None or (isinstance(self.resume, str) and self.resume.strip()),
                 "null, 'auto' or a checkpoint path")
        _require("init_from", self.init_from, self.init_from is None or (
            isinstance(self.init_from, str) and self.init_from.strip()), "null or a run folder, checkpoint or weights file")
        _require("compile_mode", self.compile_mode, self.compile_mode is None or self.compile_mode in COMPILE_MODES,
                 f"one of {', '.join(COMPILE_MODES)} (or null)")
        _require("peak_tflops", self.peak_tflops, self.peak_tflops is None or _number(self.peak_tflops) > 0,
                 "> 0 (or null)")
        _require("grad_vanishing_norm", self.grad_vanishing_norm, _number(self.grad_vanishing_norm) >= 0, ">= 0")
        _require("grad_exploding_factor", self.grad_exploding_factor, _number(self.grad_exploding_factor) > 1, "> 1")


def _number(value: object) -> float:
    """``value`` as a number to compare, NaN (which fails every comparison) when it is not one."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _require(key: str, value: object, ok: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"trainer.{key}={value!r} must be {rule}")


def gradient_health(settings: TrainerSettings) -> GradientHealth:
    """The gradient monitor and watch that ``settings`` ask for."""
    monitor = GradientMonitor(settings.grad_vanishing_norm, settings.grad_vanishing_steps,
                              settings.grad_exploding_factor)
    return GradientHealth(monitor if settings.grad_monitor else None, settings.watch_every_n_steps)
