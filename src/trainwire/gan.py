"""GAN-style training: a loop of another shape, composed from the same ports as the Trainer's.

``GANTrainer`` is a ``Paradigm``: per batch it takes one critic step, and after every
``critic_steps`` critic steps one generator step. Each network has its own optimizer and its
own ``LRPolicy``; the ``GradientPolicy`` is applied to each network's gradients before its
step; metrics go to a ``MetricsSink`` and hooks see the usual events; a ``CheckpointStore``
keeps the run, which SIGTERM saves and ``trainer.resume`` continues exactly, as the Trainer's.
``Trainer.fit`` is not touched: the classification stage that the ``AccuracyTrigger`` re-runs
*is* a ``Trainer``. The checkpoint holds both networks' optimizers and lr policies, so it has
its own components (``COMPONENTS``); the file format and its guarantees are the Trainer's.

The model is a ``GAN``: a ``generator`` (noise → samples in [0, 1]) and a ``critic`` whose
feature ``body`` is shared with a ``classifier`` (body + class head). Adversarial updates move
the shared body, which can cost the classifier accuracy; after each epoch the trigger compares
the classifier's validation accuracy with its goal and, when it has fallen more than
``tolerance`` below, the classification stage runs again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from trainwire import logs
from trainwire.checkpoints import CheckpointStore
from trainwire.data import epoch_batches, resumable_sampler
from trainwire.errors import ConfigError, TrainingInterrupted
from trainwire.gradients import GradientPolicy, GradStats, NoClip
from trainwire.hooks import emit
from trainwire.lr import Constant, LRPolicy
from trainwire.models import ACTIVATIONS
from trainwire.objectives import Classification
from trainwire.paradigms import Paradigm
from trainwire.precision import resolve_device
from trainwire.signals import StopRequest, stop_requests
from trainwire.sinks.base import MetricsSink, NullSink
from trainwire.state import FORMAT, check, finite, find, rng_state, set_rng_state, stacked, versions
from trainwire.trainer import FitResult, OptimizerFactory, Trainer, TrainState

GAN_LOSSES = ("logistic", "wasserstein_gp")


def _mlp(widths: Sequence[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
    return layers


class GAN(nn.Module):
    """A generator, a critic, and a classifier that shares the critic's body."""

    def __init__(self, features: int, classes: int, latent_dim: int = 16, hidden: Sequence[int] = (128,),
                 activation: str = "relu") -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if latent_dim < 1:
            raise ConfigError(f"model.latent_dim={latent_dim} must be >= 1")
        super().__init__()
        self.latent_dim = latent_dim
        self.generator = nn.Sequential(*_mlp([latent_dim, *hidden], activation), nn.Linear(hidden[-1], features),
                                       nn.Sigmoid())
        body = nn.Sequential(*_mlp([features, *hidden], activation))
        self.critic = nn.Sequential(body, nn.Linear(hidden[-1], 1))
        self.classifier = nn.Sequential(body, nn.Linear(hidden[-1], classes))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.generator.parameters()).device
        noise = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self.generator(noise)


def mean_cov_distance(a: Tensor, b: Tensor) -> float:
    """‖mean(a) − mean(b)‖² + ‖cov(a) − cov(b)‖²_F: how far two samples' first two moments are apart."""
    a, b = a.double(), b.double()
    return ((a.mean(0) - b.mean(0)).square().sum() + (torch.cov(a.T) - torch.cov(b.T)).square().sum()).item()


def critic_loss(loss: str, critic: nn.Module, real: Tensor, fake: Tensor, gp_weight: float) -> Tensor:
    """Critic's loss on real and (detached) generated samples."""
    if loss == "logistic":
        return F.softplus(-critic(real)).mean() + F.softplus(critic(fake)).mean()
    mix = torch.rand(len(real), 1, device=real.device)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
    penalty = (grad.norm(dim=1) - 1).square().mean()
    return critic(fake).mean() - critic(real).mean() + gp_weight * penalty


def generator_loss(loss: str, critic: nn.Module, fake: Tensor) -> Tensor:
    """Generator's loss on fresh generated samples (non-saturating for ``logistic``)."""
    return F.softplus(-critic(fake)).mean() if loss == "logistic" else -critic(fake).mean()


@dataclass(frozen=True)
class AccuracyTrigger:
    """Answers after each epoch: has ``monitor`` fallen more than ``tolerance`` below ``goal``?"""

    goal: float = 0.9
    tolerance: float = 0.05
    monitor: str = "val/accuracy"

    def __post_init__(self) -> None:
        if not 0 < self.goal <= 1:
            raise ConfigError(f"paradigm.goal={self.goal} must be in (0, 1]")
        if self.tolerance < 0:
            raise ConfigError(f"paradigm.tolerance={self.tolerance} must be >= 0")

    def should_rerun(self, metrics: dict[str, float]) -> bool:
        return metrics[self.monitor] < self.goal - self.tolerance


# GANSettings fields set from the trainer group (the rest are paradigm.*), and the plan a resume must share.
_KEYS = {key: f"trainer.{key}" for key in ("max_epochs", "log_every_n_steps", "checkpoint_every",
                                           "checkpoint_every_n_steps", "resume")}
PLAN_LABELS = {"max_epochs": "trainer.max_epochs", "critic_steps": "paradigm.critic_steps",
               "batches_per_epoch": "batches per epoch (data.batch_size)"}
COMPONENTS = ("format", "paradigm", "plan", "model", "generator_optimizer", "critic_optimizer", "generator_lr",
              "critic_lr", "gradients", "rng", "sampler", "position", "counters", "history", "epoch_losses",
              "versions")


@dataclass
class GANSettings:
    """How the adversarial loop runs; ``step`` counts generator steps."""

    max_epochs: int = 20
    critic_steps: int = 5
    loss: str = "logistic"
    gp_weight: float = 10.0
    log_every_n_steps: int = 10
    device: str = "auto"
    eval_samples: int = 512
    checkpoint_every: int = 10  # epochs between periodic epoch-XXXX.pt (last.pt is written every epoch)
    checkpoint_every_n_steps: int | None = None  # also write last.pt every n generator steps
    resume: str | None = None  # null, "auto" or a checkpoint path, as trainer.resume

    def __post_init__(self) -> None:
        for key in ("max_epochs", "critic_steps", "log_every_n_steps", "eval_samples", "checkpoint_every",
                    "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if not (value is None and key == "checkpoint_every_n_steps") and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{_KEYS.get(key, 'paradigm.' + key)}={value!r} must be an integer >= 1")
        if self.loss not in GAN_LOSSES:
            raise ConfigError(f"paradigm.loss={self.loss!r} is not one of {', '.join(GAN_LOSSES)}")
        if self.gp_weight < 0:
            raise ConfigError(f"paradigm.gp_weight={self.gp_weight} must be >= 0")


@dataclass
class _Run:
    """One ``run``'s optimizers and position: what the loop works on and what a checkpoint holds besides weights."""

    model: GAN
    g_opt: Optimizer
    c_opt: Optimizer
    train_data: Any
    plan: dict[str, int]
    state: TrainState  # the counters hooks see; ``state.step`` counts generator steps
    epoch: int = 0
    batch: int = 0  # the next batch of ``epoch``
    critic_steps: int = 0  # critic steps so far: the generator steps after every ``settings.critic_steps`` of them
    reruns: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    c_losses: list[Tensor] = field(default_factory=list)  # this epoch's, detached; read once at its end
    g_losses: list[Tensor] = field(default_factory=list)


class GANTrainer(Paradigm):
    """Runs the adversarial loop on a ``GAN``; ``run(model, train, val)`` like any paradigm.

    ``stage`` is a Trainer for the classification stage (``None``: no stage, no trigger); it
    runs once before the adversarial loop and again whenever ``trigger`` says so.

    With a ``CheckpointStore`` it keeps the run as the Trainer does: ``last.pt`` after
    every epoch (and every ``checkpoint_every_n_steps`` generator steps), ``epoch-XXXX.pt`` every
    ``checkpoint_every`` epochs, and on SIGTERM/SIGINT after the current batch, before it stops
    with ``TrainingInterrupted``. ``settings.resume`` continues exactly where a checkpoint left off.
    A signal during a classification stage stops that stage (which saves nothing); the run then
    resumes from its newest checkpoint and replays the stage exactly.
    """

    def __init__(self, *, generator_optimizer: OptimizerFactory, critic_optimizer: OptimizerFactory,
                 settings: GANSettings | None = None, generator_lr: LRPolicy | None = None,
                 critic_lr: LRPolicy | None = None, gradient_policy: GradientPolicy | None = None,
                 sink: MetricsSink | None = None, hooks: Sequence[Any] = (), stage: Trainer | None = None,
                 trigger: AccuracyTrigger | None = None, checkpoints: CheckpointStore | None = None,
                 logger: Any = None) -> None:
        self.generator_optimizer, self.critic_optimizer = generator_optimizer, critic_optimizer
        self.settings = settings or GANSettings()
        self.generator_lr, self.critic_lr = generator_lr or Constant(), critic_lr or Constant()
        self.gradients = gradient_policy or NoClip()
        self.sink = sink or NullSink()
        self.hooks = list(hooks)
        self.stage, self.trigger = stage, (trigger or AccuracyTrigger()) if stage is not None else None
        self.checkpoints = checkpoints
        self.log = logger or logs.get_logger()

    def _emit(self, event: str, *args: Any) -> None:
        emit(self.hooks, event, *args)

    def run(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None) -> FitResult:
        """The loop, in short::

            resume from a checkpoint if settings.resume says so, else stage.fit(classifier) (when a stage is given)
            for epoch in range(max_epochs):
                for batch in train_data (from the resumed batch on):
                    critic step (gradient policy, critic optimizer, critic lr policy)
                    every critic_steps critic steps: generator step (the same, for the generator)
                    checkpoint every n generator steps, or now and stop if SIGTERM/SIGINT came
                evaluate: val/mean_cov_distance of samples vs the validation data; val/accuracy
                if trigger.should_rerun(metrics): stage.fit(classifier) again
                log; checkpoint
        """
        if not isinstance(model, GAN):
            raise ConfigError(f"paradigm=gan needs model=gan; got {type(model).__name__}")
        if val_data is None:
            raise ConfigError("paradigm=gan needs validation data (data.val_fraction > 0) to measure its samples")
        settings = self.settings
        n_batches = len(train_data)  # type: ignore[arg-type]
        if n_batches < settings.critic_steps:
            raise ConfigError(f"paradigm.critic_steps={settings.critic_steps} is more than the {n_batches} batches "
                              "of an epoch: the generator would never step")
        device = resolve_device(settings.device)
        model.to(device)
        g_opt = self.generator_optimizer(list(model.generator.parameters()))
        c_opt = self.critic_optimizer(list(model.critic.parameters()))
        self.critic_lr.attach(c_opt, steps_per_epoch=n_batches, max_epochs=settings.max_epochs)
        self.generator_lr.attach(g_opt, steps_per_epoch=n_batches // settings.critic_steps,
                                 max_epochs=settings.max_epochs)
        plan = {"max_epochs": settings.max_epochs, "critic_steps": settings.critic_steps, "batches_per_epoch": n_batches}
        run = _Run(model, g_opt, c_opt, train_data, plan, TrainState(model=model, optimizer=g_opt))
        # Before the RNG is restored: iterating a DataLoader draws a seed from the global generator.
        real_val = torch.cat([batch[0] for batch in val_data]).to(device)
        resumed = self._resume(run)  # before the sinks start: a checkpoint that fails verification changes nothing
        with stop_requests() as stop:
            self.sink.start()
            try:
                result = self._loop(run, val_data, real_val, stop, resumed)
            except BaseException as error:
                self._emit("on_exception", run.state, error)
                self.sink.finish("killed" if isinstance(error, (KeyboardInterrupt, TrainingInterrupted)) else "failed")
                raise
        self.sink.summary(result.summary())
        self.sink.finish("finished")
        self.log.info("train_end", **result.summary())
        self._emit("on_train_end", run.state, result)
        return result

    def _stage(self, run: _Run, val_data: Any) -> None:
        try:
            self.stage.fit(run.model.classifier, run.train_data, val_data)
        except TrainingInterrupted as stop:  # the stage saves nothing: this run's newest checkpoint is what resumes
            saved = self.checkpoints is not None and self.checkpoints.latest() is not None
            raise TrainingInterrupted(stop.signum, saved=saved) from None
        run.model.train()

    def _loop(self, run: _Run, val_data: Any, real_val: Tensor, stop: StopRequest, resumed: bool) -> FitResult:
        settings, loss, model, state = self.settings, self.settings.loss, run.model, run.state
        g_params, c_params = list(model.generator.parameters()), list(model.critic.parameters())
        device = real_val.device
        save_every = settings.checkpoint_every_n_steps
        if self.stage is not None and not resumed:
            self._stage(run, val_data)
        self._emit("on_train_start", state)
        model.train()
        for epoch in range(run.epoch, settings.max_epochs):
            state.epoch, started = epoch, time.perf_counter()
            self._emit("on_epoch_start", state)
            for index, batch in enumerate(epoch_batches(run.train_data, epoch, run.batch), start=run.batch):
                state.batch = index
                real = batch[0].to(device)
                with torch.no_grad():
                    fake = model.sample(len(real))
                c_loss = critic_loss(loss, model.critic, real, fake, settings.gp_weight)
                c_grads, c_lr = self._update(c_loss, c_params, run.c_opt, self.critic_lr)
                run.c_losses.append(c_loss.detach())
                run.critic_steps += 1
                generator_turn = run.critic_steps % settings.critic_steps == 0
                if generator_turn:
                    g_loss = generator_loss(loss, model.critic, model.sample(len(real)))
                    # The generator's backward also reaches the critic: its gradients are dropped unused.
                    g_grads, g_lr = self._update(g_loss, g_params, run.g_opt, self.generator_lr, also_clear=run.c_opt)
                    run.g_losses.append(g_loss.detach())
                    state.step += 1
                    self._emit("on_batch_end", state, run.g_losses[-1])
                    if state.step % settings.log_every_n_steps == 0:  # the only per-step device sync
                        self.sink.log({"train/critic_loss": run.c_losses[-1].item(),
                                       "train/generator_loss": g_loss.item(),
                                       "train/critic_lr": c_lr, "train/generator_lr": g_lr,
                                       "train/critic_grad_norm": c_grads.norm.item(),
                                       "train/generator_grad_norm": g_grads.norm.item()}, step=state.step, epoch=epoch)
                run.batch = index + 1
                if stop.signum is not None or (generator_turn and save_every and state.step % save_every == 0):
                    self._save(run, ["last"])
                    if stop.signum is not None:
                        raise TrainingInterrupted(stop.signum, saved=self.checkpoints is not None)
            metrics = {"train/critic_loss": torch.stack(run.c_losses).mean().item()}
            if run.g_losses:
                metrics["train/generator_loss"] = torch.stack(run.g_losses).mean().item()
            metrics.update(self._evaluate(model, real_val, val_data))
            self._emit("on_validation_end", state, {k: v for k, v in metrics.items() if k.startswith("val/")})
            if self.stage is not None and self.trigger.should_rerun(metrics):
                self.log.info("stage_rerun", epoch=epoch, accuracy=metrics["val/accuracy"], goal=self.trigger.goal,
                              tolerance=self.trigger.tolerance)
                self._stage(run, val_data)
                run.reruns += 1
                metrics["stage/accuracy"] = self._evaluate(model, real_val, val_data)["val/accuracy"]
            if self.stage is not None:
                metrics["stage/reruns"] = float(run.reruns)
            self.critic_lr.after_epoch(metrics)
            self.generator_lr.after_epoch(metrics)
            metrics["time/epoch_s"] = time.perf_counter() - started
            run.history.append(metrics)
            self.sink.log(metrics, step=state.step, epoch=epoch)
            self.log.info("epoch", epoch=epoch, step=state.step, **metrics)
            self._emit("on_epoch_end", state, metrics)
            run.epoch, run.batch, run.c_losses, run.g_losses = epoch + 1, 0, [], []
            self._save(run, ["last", *([f"epoch-{epoch:04d}"] if (epoch + 1) % settings.checkpoint_every == 0 else [])])
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, saved=self.checkpoints is not None)
        history = run.history
        return FitResult(epochs_completed=len(history), best_epoch=None, best_value=None, monitor=None,
                         stop_reason="max_epochs", history=history, steps=state.step,
                         avg_epoch_time_s=math.fsum(h["time/epoch_s"] for h in history) / max(len(history), 1))

    def _update(self, loss: Tensor, params: list[Tensor], optimizer: Optimizer, lr_policy: LRPolicy,
                also_clear: Optimizer | None = None) -> tuple[GradStats, float]:
        """One network's step: backward, the gradient policy, the optimizer and its lr policy; (norms, lr used)."""
        loss.backward()
        if also_clear is not None:
            also_clear.zero_grad(set_to_none=True)
        grads = self.gradients.apply(params)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_policy.after_step()
        return grads, lr

    def _save(self, run: _Run, names: list[str]) -> None:
        """Writes the whole adversarial state at a batch boundary (gradients are zero there)."""
        if self.checkpoints is None:
            return
        sampler = resumable_sampler(run.train_data)
        saved = {
            "format": FORMAT, "paradigm": "gan", "plan": run.plan,
            "model": finite(run.model.state_dict()),
            "generator_optimizer": run.g_opt.state_dict(), "critic_optimizer": run.c_opt.state_dict(),
            "generator_lr": self.generator_lr.state_dict(), "critic_lr": self.critic_lr.state_dict(),
            "gradients": self.gradients.state_dict(),
            "rng": rng_state(),
            "sampler": sampler.state_dict() if sampler is not None else {},
            "position": {"epoch": run.epoch, "batch": run.batch},
            "counters": {"step": run.state.step, "critic_steps": run.critic_steps, "reruns": run.reruns},
            "history": run.history,
            "epoch_losses": {"critic": stacked(run.c_losses), "generator": stacked(run.g_losses)},
            "versions": versions(),
        }
        self.checkpoints.save(saved, names, meta={"epoch": run.epoch, "batch": run.batch, "step": run.state.step})

    def _resume(self, run: _Run) -> bool:
        """Puts back what ``settings.resume`` names (every component checked first); False for a fresh start."""
        where, checkpoint = find(self.settings.resume, self.checkpoints, self.log)
        if checkpoint is None:
            return False
        check(checkpoint, COMPONENTS, run.plan, f"checkpoint {where}", PLAN_LABELS)
        run.model.load_state_dict(checkpoint["model"])
        run.g_opt.load_state_dict(checkpoint["generator_optimizer"])
        run.c_opt.load_state_dict(checkpoint["critic_optimizer"])
        self.generator_lr.load_state_dict(checkpoint["generator_lr"])
        self.critic_lr.load_state_dict(checkpoint["critic_lr"])
        self.gradients.load_state_dict(checkpoint["gradients"])
        sampler = resumable_sampler(run.train_data)
        if sampler is not None and checkpoint["sampler"]:
            sampler.load_state_dict(checkpoint["sampler"])
        set_rng_state(checkpoint["rng"])
        counters, position, losses = checkpoint["counters"], checkpoint["position"], checkpoint["epoch_losses"]
        run.state.step, run.critic_steps, run.reruns = counters["step"], counters["critic_steps"], counters["reruns"]
        run.epoch, run.batch = position["epoch"], position["batch"]
        run.history = list(checkpoint["history"])
        device = next(run.model.parameters()).device
        run.c_losses = list(losses["critic"].to(device).unbind())
        run.g_losses = list(losses["generator"].to(device).unbind())
        self.log.info("resumed", checkpoint=where, epoch=run.epoch, batch=run.batch, step=run.state.step)
        return True

    @torch.no_grad()
    def _evaluate(self, model: GAN, real_val: Tensor, val_data: Any) -> dict[str, float]:
        model.eval()
        n = min(self.settings.eval_samples, len(real_val))
        samples = model.sample(n, generator=torch.Generator().manual_seed(0))  # the same noise every epoch
        metrics = {"val/mean_cov_distance": mean_cov_distance(samples, real_val[:n])}
        if self.stage is not None:
            metrics["val/accuracy"] = Classification().evaluate(
                model.classifier, ((x.to(real_val.device), y.to(real_val.device)) for x, y in val_data))["accuracy"]
        model.train()
        return metrics
