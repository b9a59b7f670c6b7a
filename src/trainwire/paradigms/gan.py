"""GAN-style training as a step of the one loop: critic steps, generator steps, two optimizers.

``GANStep`` is a ``Step``: per batch it takes one critic step, and after every
``critic_steps`` critic steps one generator step (a counted optimizer step of the loop).
Each network has its own optimizer, LR policy and grad scaler; the ``GradientPolicy`` is
applied to each network's gradients before its step, under the run's precision and the
non-finite check, as in the supervised step. ``GANEvaluation`` is its ``Objective``: how far
generated samples are from the validation data, and the classifier's accuracy. Everything
else (signals, checkpoints, exact resume, hooks, sinks) is the Trainer's.

The model is a ``GAN``: a ``generator`` (noise → samples in [0, 1]) and a ``critic`` whose
feature ``body`` is shared with a ``classifier`` (body + class head). Adversarial updates move
the shared body, which can cost the classifier accuracy; after each epoch the trigger compares
the classifier's validation accuracy with its goal and, when it has fallen more than
``tolerance`` below, the classification stage runs again. The stage is the one loop's
``Trainer`` too, built by the container with every ``trainer.*`` setting, the run's sinks (its
metrics under ``stage/``) and hooks (ADR 0025).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from trainwire.checkpointing.parts import Losses
from trainwire.errors import ConfigError
from trainwire.loop.steps import OptimizerFactory, Step, StepContext, StepResult
from trainwire.models import ACTIVATIONS
from trainwire.paradigms.frechet import FrechetDistance, sample_grid
from trainwire.policies.gradients import GradientPolicy, GradStats, NoClip
from trainwire.policies.lr import Constant, LRPolicy
from trainwire.policies.objectives import Classification, Objective, Reduce, local
from trainwire.runtime.precision import Precision

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
            raise ConfigError(f"step.goal={self.goal} must be in (0, 1]")
        if self.tolerance < 0:
            raise ConfigError(f"step.tolerance={self.tolerance} must be >= 0")

    def should_rerun(self, metrics: dict[str, float]) -> bool:
        return metrics[self.monitor] < self.goal - self.tolerance


class GANEvaluation(Objective):
    """The GAN's validation: ``mean_cov_distance`` and ``frechet_distance`` (``trainwire.paradigms.frechet``) of
    ``eval_samples`` generated samples to the validation inputs, the classifier's ``accuracy``, and a
    grid of generated digits (the ``samples`` image). Training is the step's (``GANStep``), not an objective's."""

    def __init__(self, eval_samples: int = 512) -> None:
        if type(eval_samples) is not int or eval_samples < 2:
            raise ConfigError(f"objective.eval_samples={eval_samples!r} must be an integer >= 2")
        self.eval_samples = eval_samples
        self.frechet, self._images = FrechetDistance(), {}

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        raise ConfigError("objective=gan only evaluates; a GAN is trained by step=gan's step")

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local,
                 skip: Collection[str] = ()) -> dict[str, float]:
        batches = list(batches)
        real = torch.cat([inputs for inputs, _ in batches])
        n = min(self.eval_samples, len(real))
        generated = model.sample(self.eval_samples, generator=torch.Generator().manual_seed(0))  # the same noise every epoch
        samples = generated[:n]
        metrics = {"mean_cov_distance": mean_cov_distance(samples, real[:n])}
        if "frechet_distance" not in skip:
            metrics["frechet_distance"] = self.frechet(generated, [inputs for inputs, _ in batches], reduce)
        metrics["accuracy"] = Classification().evaluate(model.classifier, batches)["accuracy"]
        self._images = {} if "samples" in skip else {"samples": sample_grid(samples)}
        return metrics

    def images(self) -> dict[str, Any]:
        return self._images


class _Counters:
    """The GAN step's own state: critic steps so far (the generator steps after every k of them), stage re-runs."""

    def __init__(self) -> None:
        self.critic_steps = self.reruns = 0

    def state_dict(self) -> dict[str, int]:
        return {"critic_steps": self.critic_steps, "reruns": self.reruns}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.critic_steps, self.reruns = state["critic_steps"], state["reruns"]


class GANStep(Step):
    """One critic step per batch and, every ``critic_steps`` of them, one generator step (the loop's counted step).

    ``stage`` is a Trainer for the classification stage, or a zero-argument callable that builds
    it when it first runs (``None``: no stage, no trigger); it runs once before the first
    adversarial batch of a fresh run and again whenever ``trigger`` says so. It shares the run's StopToken: a stop during a stage ends the run,
    which then resumes from its newest checkpoint and replays the stage exactly.
    """

    def __init__(self, *, generator_optimizer: OptimizerFactory, critic_optimizer: OptimizerFactory,
                 generator_lr: LRPolicy | None = None, critic_lr: LRPolicy | None = None,
                 gradient_policy: GradientPolicy | None = None, critic_steps: int = 2, loss: str = "logistic",
                 gp_weight: float = 10.0, stage: Any = None, trigger: AccuracyTrigger | None = None) -> None:
        if type(critic_steps) is not int or critic_steps < 1:
            raise ConfigError(f"step.critic_steps={critic_steps!r} must be an integer >= 1")
        if loss not in GAN_LOSSES:
            raise ConfigError(f"step.loss={loss!r} is not one of {', '.join(GAN_LOSSES)}")
        if gp_weight < 0:
            raise ConfigError(f"step.gp_weight={gp_weight} must be >= 0")
        self.generator_optimizer, self.critic_optimizer = generator_optimizer, critic_optimizer
        self.generator_lr, self.critic_lr = generator_lr or Constant(), critic_lr or Constant()
        self.gradients = gradient_policy or NoClip()
        self.critic_steps, self.loss, self.gp_weight = critic_steps, loss, gp_weight
        self.stage, self.trigger = stage, (trigger or AccuracyTrigger()) if stage is not None else None
        self._critic = self._generator = None  # compiled forms (trainer.compile), else the model's own

    def check(self, settings: Any, strategy: Any) -> None:
        if strategy.name != "single":  # auto is single unless a process group is running
            raise ConfigError(f"step=gan trains in one process; strategy={strategy.name} is not "
                              "supported (use strategy=single)")
        if settings.accumulate_steps != 1:
            raise ConfigError(f"step=gan steps both networks every batch; trainer.accumulate_steps="
                              f"{settings.accumulate_steps} is not supported (use 1)")
        if getattr(settings, "watch_every_n_steps", None) is not None:
            raise ConfigError("step=gan steps two networks and reports no gradients to the watch; "
                              "trainer.watch_every_n_steps is not supported (set it to null)")

    def compile(self, module: nn.Module, compile: Any) -> nn.Module:
        # The step calls the critic and the generator, never the GAN's forward: those two are compiled.
        self._critic, self._generator = compile(module.critic), compile(module.generator)
        return module

    def setup(self, model: nn.Module, context: StepContext) -> dict[str, Any]:
        if not isinstance(model, GAN):
            raise ConfigError(f"step=gan needs model=gan; got {type(model).__name__}")
        if not isinstance(getattr(context.objective, "objective", context.objective), GANEvaluation):
            raise ConfigError(f"step=gan evaluates with objective=gan; got {type(context.objective).__name__}")
        if context.val_data is None:
            raise ConfigError("step=gan needs validation data (data.val_fraction > 0) to measure its samples")
        if context.batches_per_epoch < self.critic_steps:
            raise ConfigError(f"step.critic_steps={self.critic_steps} is more than the {context.batches_per_epoch} "
                              "batches of an epoch: the generator would never step")
        self.context, self.model = context, model
        self.g_params, self.c_params = list(model.generator.parameters()), list(model.critic.parameters())
        self.optimizer = self.g_opt = self.generator_optimizer(self.g_params)
        self.c_opt = self.critic_optimizer(self.c_params)
        self.critic_lr.attach(self.c_opt, steps_per_epoch=context.batches_per_epoch, max_epochs=context.max_epochs)
        self.generator_lr.attach(self.g_opt, steps_per_epoch=context.batches_per_epoch // self.critic_steps,
                                 max_epochs=context.max_epochs)
        # One grad scaler per network (fp16): each backward is scaled and unscaled on its own.
        self.g_precision = context.precision
        self.c_precision = Precision(context.precision.precision, context.precision.device)
        device = context.precision.device
        self.counters = _Counters()
        self.c_losses, self.g_losses = Losses(device), Losses(device)
        self._last: tuple[Any, ...] | None = None
        return {"generator_optimizer": self.g_opt, "critic_optimizer": self.c_opt, "generator_lr": self.generator_lr,
                "critic_lr": self.critic_lr, "gradients": self.gradients, "critic_precision": self.c_precision,
                "gan": self.counters, "critic_losses": self.c_losses, "generator_losses": self.g_losses}

    def plan(self) -> dict[str, Any]:
        return {"step": "gan", "step.critic_steps": self.critic_steps}

    def start(self, model: nn.Module, resumed: bool) -> None:
        if self.stage is not None and not resumed:
            self._stage(model)

    def _stage(self, model: GAN) -> None:
        context = self.context
        if not hasattr(self.stage, "fit"):  # built when first needed: the run's sinks exist by then
            self.stage = self.stage()
        self.stage.fit(model.classifier, context.train_data, context.val_data, stop=context.stop)
        model.train()

    def _update(self, loss: Tensor, params: list[Tensor], optimizer: Optimizer, lr_policy: LRPolicy,
                precision: Precision, also_clear: Optimizer | None = None) -> tuple[GradStats, float, bool]:
        """One network's step: backward, the gradient policy, the optimizer unless non-finite, its lr policy."""
        precision.backward(loss)
        if also_clear is not None:  # the generator's backward also reaches the critic: those gradients are unused
            also_clear.zero_grad(set_to_none=True)
        precision.unscale(optimizer)
        grads = self.gradients.apply(params)
        lr = optimizer.param_groups[0]["lr"]
        taken = precision.step(optimizer, grads if self.context.check_finite else None)
        optimizer.zero_grad(set_to_none=True)
        if taken:
            lr_policy.after_step()
        return grads, lr, taken

    def train_step(self, module: nn.Module, batch: Any, index: int) -> StepResult:
        real = batch[0]
        critic = module.critic if self._critic is None else self._critic
        with self.c_precision.autocast():
            with torch.no_grad():
                fake = self._sample(module, len(real))
            c_loss = critic_loss(self.loss, critic, real, fake, self.gp_weight)
        c_grads, c_lr, c_taken = self._update(c_loss, self.c_params, self.c_opt, self.critic_lr, self.c_precision)
        self.c_losses.append(c_loss.detach())
        self.counters.critic_steps += 1
        if self.counters.critic_steps % self.critic_steps:
            # Not the generator's turn: only a skipped critic step is the loop's business.
            return StepResult(self.c_losses[-1], counted=not c_taken, taken=c_taken)
        with self.g_precision.autocast():
            g_loss = generator_loss(self.loss, critic, self._sample(module, len(real)))
        g_grads, g_lr, g_taken = self._update(g_loss, self.g_params, self.g_opt, self.generator_lr, self.g_precision,
                                              also_clear=self.c_opt)
        self.g_losses.append(g_loss.detach())
        self._last = (self.c_losses[-1], self.g_losses[-1], c_lr, g_lr, c_grads, g_grads)
        return StepResult(self.g_losses[-1], counted=True, taken=c_taken and g_taken)

    def _sample(self, module: GAN, n: int) -> Tensor:
        if self._generator is None:
            return module.sample(n)
        return self._generator(torch.randn(n, module.latent_dim).to(self.context.precision.device))  # as GAN.sample

    def log_values(self) -> dict[str, float]:
        c_loss, g_loss, c_lr, g_lr, c_grads, g_grads = self._last
        return {"train/critic_loss": c_loss.item(), "train/generator_loss": g_loss.item(),
                "train/critic_lr": c_lr, "train/generator_lr": g_lr,
                "train/critic_grad_norm": c_grads.norm.item(), "train/generator_grad_norm": g_grads.norm.item()}

    def end_epoch(self, model: nn.Module, metrics: dict[str, float]) -> None:
        metrics["train/critic_loss"] = torch.stack(self.c_losses).mean().item()
        if self.g_losses:
            metrics["train/generator_loss"] = torch.stack(self.g_losses).mean().item()
        self.c_losses.clear()
        self.g_losses.clear()
        if self.stage is not None and self.trigger.should_rerun(metrics):
            self.context.log.info("stage_rerun", accuracy=metrics["val/accuracy"], goal=self.trigger.goal,
                                  tolerance=self.trigger.tolerance)
            self._stage(model)
            self.counters.reruns += 1
            metrics["stage/accuracy"] = self._accuracy(model)
        if self.stage is not None:
            metrics["stage/reruns"] = float(self.counters.reruns)
        self.critic_lr.after_epoch(metrics)
        self.generator_lr.after_epoch(metrics)

    @torch.no_grad()
    def _accuracy(self, model: GAN) -> float:
        model.eval()
        move = self.context.strategy.mover(self.context.precision.device)
        accuracy = Classification().evaluate(model.classifier, map(move, self.context.val_data))["accuracy"]
        model.train()
        return accuracy


def _with_lr(factory: OptimizerFactory, lr: float | None) -> OptimizerFactory:
    """``factory`` with its lr replaced through a param group, so any optimizer taking param groups works."""
    if lr is None:
        return factory
    return lambda params: factory([{"params": list(params), "lr": lr}])


def gan_step(critic_steps: int = 2, loss: str = "logistic", gp_weight: float = 10.0,
             generator_lr: float | None = None, critic_lr: float | None = None, stage: bool = True,
             stage_epochs: int = 3, goal: float = 0.9, tolerance: float = 0.05, *,
             optimizer: OptimizerFactory, lr_policy: LRPolicy, lr_policy_factory: Callable[[], LRPolicy],
             gradient_policy: GradientPolicy | None = None, stage_trainer: Callable[..., Any] | None = None) -> GANStep:
    """What ``step=gan`` builds. The parameters before ``*`` are the ``step`` keys; the rest the container's:
    ``lr_policy`` (the generator's) and ``lr_policy_factory`` (another, the critic's) are the ``lr`` node
    built twice; ``stage_trainer(objective, max_epochs=...)`` builds a Trainer of the run for a stage.

    ``critic_steps`` critic updates per generator update; ``loss`` logistic (non-saturating) or
    wasserstein_gp, with ``gp_weight`` its gradient penalty; ``generator_lr``/``critic_lr`` replace
    ``optimizer.lr`` for one network (None: keep it). With ``stage``, the classifier (critic body +
    class head) trains for ``stage_epochs`` first, and again whenever its val/accuracy < ``goal`` - ``tolerance``.
    """
    for key, lr in (("generator_lr", generator_lr), ("critic_lr", critic_lr)):
        if lr is not None and not lr > 0:
            raise ConfigError(f"step.{key}={lr} must be > 0 (or null: optimizer.lr)")
    if type(stage_epochs) is not int or stage_epochs < 1:
        raise ConfigError(f"step.stage_epochs={stage_epochs!r} must be an integer >= 1")
    classification = None
    if stage:
        if stage_trainer is None:
            raise ConfigError("step.stage=true needs a stage_trainer (the container supplies one)")
        classification = partial(stage_trainer, Classification(), max_epochs=stage_epochs)
    return GANStep(generator_optimizer=_with_lr(optimizer, generator_lr), critic_optimizer=_with_lr(optimizer, critic_lr),
                   generator_lr=lr_policy, critic_lr=lr_policy_factory(), gradient_policy=gradient_policy,
                   critic_steps=critic_steps, loss=loss, gp_weight=gp_weight, stage=classification,
                   trigger=AccuracyTrigger(goal, tolerance))
