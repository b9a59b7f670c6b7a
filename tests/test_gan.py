"""GAN-style training: a step of the one loop; samples approach the data."""

from __future__ import annotations

import functools
import signal

import pytest
import torch
from dependency_injector import providers

from trainwire import CheckpointError, ConfigError, NoClip, TrainingInterrupted
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.data import digits
from trainwire.loop.trainer import Trainer, TrainerSettings
from trainwire.paradigms.gan import (
    GAN,
    AccuracyTrigger,
    GANEvaluation,
    GANStep,
    mean_cov_distance,
)
from trainwire.policies.lr import Constant
from trainwire.testing import RecordingHook, RecordingSink


def distance_now(model, val):
    real = torch.cat([x for x, _ in val])
    n = min(512, len(real))
    with torch.no_grad():
        return mean_cov_distance(model.sample(n, generator=torch.Generator().manual_seed(0)), real[:n])


def test_experiment_gan_moves_the_samples_toward_the_data(tmp_path):
    container = build_container(compose(["experiment=gan", f"run_dir={tmp_path}", "step.stage=false",
                                         "trainer.max_epochs=5"]))
    model, loaders = container.model(), container.data()
    container.model.override(providers.Object(model))
    container.data.override(providers.Object(loaders))
    built = container.paradigm().trainer.step
    assert isinstance(built, GANStep) and built.generator_lr is not built.critic_lr  # one lr policy per network
    before = distance_now(model, loaders.val)
    result = run(container)
    after = [h["val/mean_cov_distance"] for h in result.history]
    # Measured: 8.76 at init -> 2.2 after 5 epochs; two halves of the real data sit 0.13 apart.
    assert after[-1] < 0.35 * before
    assert after[-1] == pytest.approx(distance_now(model, loaders.val))
    assert loaders.train.batch_sampler.epoch == 4  # each epoch was shuffled afresh (set_epoch), the last one 4th


class CountingLR(Constant):
    def attach(self, optimizer, *, steps_per_epoch, max_epochs):
        super().attach(optimizer, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
        self.optimizer, self.steps_per_epoch, self.steps = optimizer, steps_per_epoch, 0

    def after_step(self):
        self.steps += 1


class RecordingClipper(NoClip):
    def __init__(self):
        self.calls = []

    def apply(self, parameters):
        self.calls.append({id(p) for p in parameters})
        return super().apply(parameters)


def test_critic_steps_per_generator_step_each_with_its_own_optimizer_lr_policy_and_gradient_policy():
    data = digits(batch_size=64, seed=0, train_samples=384)  # 6 batches an epoch
    model = GAN(64, 10, latent_dim=4, hidden=[16])
    g_lr, c_lr, clipper, sink, hook = CountingLR(), CountingLR(), RecordingClipper(), RecordingSink(), RecordingHook()
    step = GANStep(
        generator_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        critic_optimizer=functools.partial(torch.optim.SGD, lr=1e-2),
        critic_steps=3, generator_lr=g_lr, critic_lr=c_lr, gradient_policy=clipper,
    )
    trainer = Trainer(objective=GANEvaluation(), step=step, sink=sink, hooks=[hook],
                      settings=TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=1))
    result = trainer.fit(model, data.train, data.val)
    assert c_lr.steps == 12 and g_lr.steps == 4 and result.steps == 4  # 2 epochs x 6 critic steps, / 3
    assert (c_lr.steps_per_epoch, g_lr.steps_per_epoch) == (6, 2)
    assert isinstance(c_lr.optimizer, torch.optim.SGD) and isinstance(g_lr.optimizer, torch.optim.Adam)
    critic, generator = {id(p) for p in model.critic.parameters()}, {id(p) for p in model.generator.parameters()}
    assert clipper.calls == ([critic] * 3 + [generator]) * 4  # the gradient policy before each network's step
    assert [r.step for r in sink.records if "train/critic_lr" in r.metrics] == [1, 2, 3, 4]
    assert {"train/critic_lr", "train/generator_lr", "train/critic_grad_norm"} <= set(sink.records[0].metrics)
    assert sink.status == "finished"
    names = [name for name, _, _ in hook.events]
    assert names[0] == "on_train_start" and names[-1] == "on_train_end" and names.count("on_epoch_end") == 2


def test_the_trigger_answers_from_goal_and_tolerance():
    trigger = AccuracyTrigger(goal=0.9, tolerance=0.05)
    assert trigger.should_rerun({"val/accuracy": 0.84})
    assert not trigger.should_rerun({"val/accuracy": 0.86})
    with pytest.raises(ConfigError, match="step.tolerance=-0.1 must be >= 0"):
        AccuracyTrigger(0.9, -0.1)


@pytest.mark.parametrize(("goal", "tolerance", "reruns"), [(0.999, 0.0, [1.0, 2.0]), (0.35, 0.05, [0.0, 0.0])])
def test_the_classification_stage_reruns_when_accuracy_falls_below_goal_minus_tolerance(tmp_path, goal, tolerance, reruns):
    container = build_container(compose([
        "experiment=gan", f"run_dir={tmp_path}", "trainer.max_epochs=2",
        "step.stage_epochs=1", f"step.goal={goal}", f"step.tolerance={tolerance}"]))
    result = run(container)
    assert [h["stage/reruns"] for h in result.history] == reruns
    assert all(0.0 < h["val/accuracy"] <= 1.0 for h in result.history)
    rerun_epochs = [h for h in result.history if "stage/accuracy" in h]
    assert len(rerun_epochs) == int(reruns[-1])


def test_gan_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="step.critic_steps=0 must be an integer >= 1"):
        build_container(compose(["experiment=gan", "step.critic_steps=0"]))
    with pytest.raises(ConfigError, match="step.loss='hinge' is not one of logistic, wasserstein_gp"):
        build_container(compose(["experiment=gan", "step.loss=hinge"]))
    with pytest.raises(ConfigError, match="step=gan steps both networks every batch; trainer.accumulate_steps=2"):
        build_container(compose(["experiment=gan", "trainer.accumulate_steps=2"]))
    with pytest.raises(ConfigError, match="step=gan evaluates with objective=gan; got Classification"):
        run(compose(["experiment=gan", "objective=classification", f"run_dir={tmp_path / 'objective'}"]))
    with pytest.raises(ConfigError, match="step=gan needs model=gan"):
        run(compose(["step=gan", f"run_dir={tmp_path}"]))


class SignalAtBatch:
    """A stage hook that sends this process SIGTERM at a batch of its ``fit`` number ``fit`` (from 1)."""

    def __init__(self, fit: int, batch: int = 3) -> None:
        self.fit, self.batch, self.fits = fit, batch, 0

    def on_train_start(self, state):
        self.fits += 1

    def on_batch_end(self, state, loss):
        if self.fits == self.fit and state.epoch == 0 and state.batch == self.batch:
            signal.raise_signal(signal.SIGTERM)


# Fit 1: the stage before epoch 0; fit 2: its re-run at the end of epoch 0, before epoch 0's checkpoint;
# fit 3: the re-run at the end of epoch 1, when epoch 0's checkpoint stands (resuming replays epoch 1).
@pytest.mark.parametrize(("fit", "saved"), [(1, False), (2, False), (3, True)])
def test_a_signal_in_a_classification_stage_stops_the_run_and_says_whether_a_checkpoint_stands(tmp_path, fit, saved):
    container = build_container(compose(["experiment=gan", f"run_dir={tmp_path}", "trainer.max_epochs=3",
                                         "step.stage_epochs=1", "step.goal=0.999", "step.tolerance=0"]))
    loop = container.paradigm()
    loop.trainer.step.stage = loop.trainer.step.stage()  # the stage's Trainer, built now so the hook is its alone
    loop.trainer.step.stage.hooks.append(SignalAtBatch(fit))
    loop.trainer.sink = sink = RecordingSink()
    container.paradigm.override(providers.Object(loop))
    with pytest.raises(TrainingInterrupted) as stopped:
        run(container)
    assert stopped.value.exit_code == 143 and stopped.value.saved is saved and sink.status == "killed"
    assert (LocalCheckpointStore(tmp_path / "checkpoints").latest() is not None) is saved
    if saved:
        assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["loop"]["position"] == {"epoch": 1, "batch": 0}


def test_a_gan_resume_refuses_a_checkpoint_of_another_loop_or_plan(tmp_path):
    supervised = tmp_path / "supervised"
    run(compose([f"run_dir={supervised}", "trainer.max_epochs=1", "lr=constant"]))
    job = ["experiment=gan", "step.stage=false", "trainer.max_epochs=1"]
    with pytest.raises(CheckpointError, match=r"lacks generator_optimizer, critic_optimizer, generator_lr, critic_lr"):
        run(compose([*job, f"run_dir={tmp_path / 'a'}", f"trainer.resume={supervised / 'checkpoints' / 'last.pt'}"]))
    run(compose([*job, f"run_dir={tmp_path / 'b'}"]))
    with pytest.raises(ConfigError, match=r"another config \(step\.critic_steps: 2 -> 3\)"):
        run(compose([*job, f"run_dir={tmp_path / 'b'}", "trainer.resume=auto", "step.critic_steps=3"]))
    with pytest.raises(CheckpointError, match=r"planned with step.critic_steps=2, this run has 3"):
        run(compose([*job, f"run_dir={tmp_path / 'c'}", f"trainer.resume={tmp_path / 'b/checkpoints/last.pt'}",
                     "step.critic_steps=3"]))
