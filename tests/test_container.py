"""The container: every option of every group composes and builds; slots swap by override."""

from __future__ import annotations

import json

import pytest
import torch
from dependency_injector import containers, providers

from trainwire import (
    Classification,
    ConfigError,
    Constant,
    CosineWarmRestarts,
    FanOut,
    IsolatedSink,
    NeverStop,
    NoClip,
    NormClipper,
    NullSink,
    PatienceStopper,
    ReduceOnPlateau,
    Regression,
    Trainer,
    ValueClipper,
    WarmupCosine,
)
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import GROUPS, SUBGROUPS, compose, options
from trainwire.containers import TrainerContainer, build_container, run
from trainwire.loop.steps import SupervisedStep
from trainwire.models import MLP
from trainwire.paradigms.base import Paradigm, Pretrain, Supervised
from trainwire.paradigms.boosting import GBDTStep
from trainwire.paradigms.gan import GAN, GANEvaluation, GANStep
from trainwire.paradigms.generative import GaussianDensity, NegativeLogLikelihood
from trainwire.paradigms.pretraining import (
    MaskedAutoencoder,
    MaskedReconstruction,
    Predictor,
)
from trainwire.policies.cadence import Cadence
from trainwire.policies.nonfinite import (
    IgnoreNonFinite,
    RaiseOnNonFinite,
    SkipNonFinite,
)
from trainwire.runtime.distributed import DDP, FSDP, SingleProcess
from trainwire.testing import RecordingHook, RecordingSink, ScriptedStopper

EXPECTED = {
    ("lr", "warmup_cosine"): WarmupCosine, ("lr", "constant"): Constant,
    ("lr", "cosine_restarts"): CosineWarmRestarts, ("lr", "plateau"): ReduceOnPlateau,
    ("stopping", "patience"): PatienceStopper, ("stopping", "none"): NeverStop,
    ("gradient", "norm_clip"): NormClipper, ("gradient", "value_clip"): ValueClipper, ("gradient", "none"): NoClip,
    ("objective", "classification"): Classification, ("objective", "regression"): Regression,
    ("model", "mlp"): MLP, ("model", "masked_autoencoder"): MaskedAutoencoder, ("model", "predictor"): Predictor,
    ("objective", "masked_reconstruction"): MaskedReconstruction,
    ("paradigm", "supervised"): Supervised, ("paradigm", "pretrain"): Pretrain, ("objective", "gan"): GANEvaluation,
    ("step", "supervised"): SupervisedStep, ("step", "gan"): GANStep, ("step", "gbdt"): GBDTStep,
    ("nonfinite", "skip"): SkipNonFinite, ("nonfinite", "raise"): RaiseOnNonFinite, ("nonfinite", "off"): IgnoreNonFinite,
    ("checkpoint", "cadence"): Cadence, ("strategy", "auto"): SingleProcess, ("strategy", "single"): SingleProcess,
    ("strategy", "ddp"): DDP, ("strategy", "fsdp"): FSDP, ("store", "local"): LocalCheckpointStore,
    ("model", "gan"): GAN, ("model", "gaussian_density"): GaussianDensity, ("objective", "nll"): NegativeLogLikelihood,
}
SINKS = {"wandb": "trainwire.sinks.wandb.WandbSink", "tensorboard": "trainwire.sinks.tensorboard.TensorBoardSink",
         "mlflow": "trainwire.sinks.mlflow.MLflowSink"}
SLOT = {"lr": "lr_policy", "stopping": "stopping_policy", "gradient": "gradient_policy", "sink": "metrics_sink",
        "optimizer": "optimizer", "objective": "objective", "model": "model", "data": "data",
        "paradigm": "paradigm", "step": "step", "nonfinite": "nonfinite", "checkpoint": "checkpoint_policy",
        "strategy": "strategy", "store": "checkpoint_store"}


def every_option():
    # `custom` needs the user's _target_ (tests/test_user_code.py builds one in every slot).
    return [(group, option) for group in GROUPS for option in options(group) if option != "custom"]


def test_every_group_has_the_required_options():
    required = {
        "lr": {"warmup_cosine", "constant", "cosine_restarts"}, "stopping": {"patience", "none"},
        "gradient": {"norm_clip", "value_clip", "none"}, "sink": {"null", "wandb", "tensorboard", "mlflow"},
        "optimizer": {"adamw", "adam", "sgd"}, "objective": {"classification", "regression"},
    }
    for group, names in required.items():
        assert names <= set(options(group)), group


@pytest.mark.parametrize(("group", "option"), every_option())
def test_every_option_composes_and_builds(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [f"{group}={option}", f"run_dir={tmp_path}"]
    if group == "data" and option == "diabetes":
        overrides.append("objective=regression")
    cfg = compose(overrides)
    container = build_container(cfg)
    built = getattr(container, SLOT[group])()
    if group == "sink":  # a multi-select group: each chosen option is its own node, sink.<option>
        assert (set(cfg.sink), type(built)) == ((set(), NullSink) if option == "null" else ({option}, FanOut))
        if option != "null":
            (isolated,) = built.sinks
            assert isinstance(isolated, IsolatedSink) and isolated.name == option
            assert f"{type(isolated.sink).__module__}.{type(isolated.sink).__name__}" == SINKS[option]
    else:
        assert cfg[group].type == option
    if (group, option) in EXPECTED:
        assert isinstance(built, EXPECTED[(group, option)])
    assert isinstance(container.trainer(), Trainer)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in SUBGROUPS for o in options(g)])
def test_every_option_of_a_nested_group_composes_and_builds(group, option, tmp_path):
    parent, _, key = group.partition("/")
    cfg = compose([f"run_dir={tmp_path}", "data=diabetes", "objective=regression", f"{group}={option}"])
    assert cfg[parent][key].name == option
    container = build_container(cfg)
    assert getattr(container, SLOT[parent])().loss.name == option
    assert isinstance(container.trainer(), Trainer)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_builds_its_paradigm_and_model(experiment, tmp_path):
    overrides = [f"experiment={experiment}", f"run_dir={tmp_path}"]
    if experiment == "finetune":
        overrides.append("freeze_base=false")  # no encoder file here: the from-scratch baseline
    container = build_container(compose(overrides))
    assert isinstance(container.paradigm(), Paradigm)
    assert isinstance(container.model(), torch.nn.Module)


def test_an_unknown_experiment_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match="experiment='nope' is not an option; choose one of: adversarial, checkpointing"):
        compose(["experiment=nope"])


def test_overriding_slots_with_fakes(tmp_path):
    container = build_container(compose([f"run_dir={tmp_path}", "trainer.max_epochs=3", "lr.warmup_epochs=1", "data.batch_size=256"]))
    sink, stopper, hook = RecordingSink(), ScriptedStopper(improved=[0], stop_at=1), RecordingHook()
    with container.metrics_sink.override(sink), container.stopping_policy.override(stopper), \
            container.hooks.override(providers.List(providers.Object(hook))):
        result = run(container)
    assert result.epochs_completed == 2 and result.stop_reason == "scripted" and result.best_epoch == 0
    assert sink.status == "finished" and len(stopper.seen) == 2
    assert ("on_train_start", 0, 0) == hook.events[0]
    # The run record is written whatever sink fills the slot.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(sink.records)
    assert [json.loads(line)["step"] for line in lines] == [r.step for r in sink.records]


def test_a_users_own_policy_by_target_in_config(tmp_path):
    cfg = compose([f"run_dir={tmp_path}"])
    cfg.lr = {"_target_": "trainwire.policies.lr.CosineWarmRestarts", "T0": 4, "T_mult": 1}
    container = build_container(cfg)
    policy = container.lr_policy()
    assert isinstance(policy, CosineWarmRestarts) and policy.T0 == 4


def test_a_users_own_policy_by_subclassing_the_container(tmp_path):
    @containers.copy(TrainerContainer)  # re-links `trainer` to the replaced provider
    class MyContainer(TrainerContainer):
        gradient_policy = providers.Factory(NormClipper, max_norm=0.25)

    container = build_container(compose([f"run_dir={tmp_path}"]), MyContainer)
    assert container.trainer().step.gradients.max_norm == 0.25


def test_null_sink_keeps_the_local_record(tmp_path):
    container = build_container(compose([f"run_dir={tmp_path}", "trainer.max_epochs=2", "lr.warmup_epochs=1"]))
    assert isinstance(container.metrics_sink(), NullSink)
    run(container)
    assert (tmp_path / "summary.json").exists() and (tmp_path / "config.yaml").exists()


def test_wandb_keys_may_be_written_at_the_sink_level(tmp_path, monkeypatch):
    """`sink.project/entity/name/mode` (the foundation's names) read as the W&B sink's own keys."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(["sink=wandb", "sink.project=p", "sink.entity=e", "sink.name=n", "sink.mode=offline",
                   f"run_dir={tmp_path}"])
    assert set(cfg.sink) == {"wandb"}
    assert {key: cfg.sink.wandb[key] for key in ("project", "entity", "name", "mode")} == {
        "project": "p", "entity": "e", "name": "n", "mode": "offline"}
    with pytest.raises(ConfigError, match="sink.mode='sideways' is not one of online, offline, disabled"):
        build_container(compose(["sink=wandb", "sink.mode=sideways", f"run_dir={tmp_path}"])).metrics_sink()
