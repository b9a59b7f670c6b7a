"""Resuming through the Trainer: exact continuation, signals, refusing bad checkpoints, non-finite steps."""

from __future__ import annotations

import copy
import functools
import os
import signal

import pytest
import torch
from conftest import blobs, make_trainer, nonfinite_policy
from torch.utils.data import DataLoader, TensorDataset

from trainwire import (
    Cadence,
    Classification,
    PatienceStopper,
    SkipNonFinite,
    TrainerSettings,
    WarmupCosine,
)
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.data import ResumableSampler
from trainwire.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteError,
    TrainingInterrupted,
)
from trainwire.policies.lr import preview
from trainwire.testing import RecordingSink, ScriptedStopper

EPOCHS = 3


def loaders(seed: int = 0):
    x, y = blobs(n=200, seed=seed)
    generator = torch.Generator()
    sampler = ResumableSampler(160, 16, seed=seed, generator=generator)  # 10 batches an epoch
    train = DataLoader(TensorDataset(x[:160], y[:160]), batch_sampler=sampler, generator=generator)
    return train, DataLoader(TensorDataset(x[160:], y[160:]), batch_size=40)


def dropout_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # dropout draws from the global RNG: resume must restore it exactly
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 3))


def trainer(directory, *, resume=None, sink=None, hooks=(), store=None, stopper=None, checkpoint_every=1,
            checkpoint_every_n_steps=2, **settings):
    options = dict(max_epochs=EPOCHS, accumulate_steps=2, device="cpu", log_every_n_steps=1, resume=resume)
    options.update(settings)
    return make_trainer(
        checkpoint_policy=Cadence(every_n_epochs=checkpoint_every, every_n_steps=checkpoint_every_n_steps),
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
        lr_policy=WarmupCosine(warmup_steps=4, min_lr=1e-4),
        stopping_policy=stopper or PatienceStopper(monitor="val/loss", patience=50),
        settings=TrainerSettings(**options), sink=sink or RecordingSink(), hooks=hooks,
        checkpoints=store or LocalCheckpointStore(directory, keep_last=2),
    )


def fit(directory, *, model_seed=0, **kwargs):
    sink = kwargs.setdefault("sink", RecordingSink())
    model = dropout_model(model_seed)
    train, val = loaders()
    result = trainer(directory, **kwargs).fit(model, train, val)
    return model, result, sink


class Crash:
    """Raises at one micro-batch: a crash at an arbitrary point, mid accumulation window included."""

    def __init__(self, epoch: int, batch: int, action=None) -> None:
        self.at, self.action = (epoch, batch), action

    def on_batch_end(self, state, loss):
        if (state.epoch, state.batch) == self.at:
            if self.action is None:
                raise RuntimeError("crash")
            self.action()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model, result, sink = fit(tmp_path_factory.mktemp("reference"))
    return {k: v.clone() for k, v in model.state_dict().items()}, result, dict(sink.series("train/loss"))


def assert_same_run(reference, model, result, sinks):
    params, expected, losses = reference
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert [h["val/loss"] for h in result.history] == [h["val/loss"] for h in expected.history]
    assert result.steps == expected.steps and result.best_epoch == expected.best_epoch
    seen = {}
    for sink in sinks:  # replayed steps must repeat exactly too
        for step, value in sink.series("train/loss"):
            assert value == losses[step], step
            seen[step] = value
    assert seen == losses


@pytest.mark.parametrize(("epoch", "batch"), [(0, 4), (1, 7), (2, 0)])
def test_a_crashed_run_resumed_from_auto_matches_the_uninterrupted_run_exactly(tmp_path, reference, epoch, batch):
    crashed = RecordingSink()
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path, sink=crashed, hooks=[Crash(epoch, batch)])
    first = read_checkpoint(tmp_path / "last.pt")
    model, result, sink = fit(tmp_path, model_seed=99, resume="auto")  # a different init: all of it comes back
    assert result.epochs_completed == EPOCHS
    assert_same_run(reference, model, result, [crashed, sink])
    assert first["loop"]["position"]["epoch"] == epoch


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path, reference):
    crashed = RecordingSink()
    previous = signal.getsignal(signal.SIGTERM)
    kill = Crash(1, 4, action=lambda: os.kill(os.getpid(), signal.SIGTERM))  # first micro-batch of a window
    with pytest.raises(TrainingInterrupted) as interrupted:
        fit(tmp_path, sink=crashed, hooks=[kill], checkpoint_every_n_steps=None)
    assert interrupted.value.exit_code == 143
    assert crashed.status == "killed"
    assert signal.getsignal(signal.SIGTERM) is previous  # fit leaves no handler behind
    saved = read_checkpoint(tmp_path / "last.pt")
    assert saved["loop"]["position"] == {"epoch": 1, "batch": 6}  # the window of batches 4 and 5 was finished first
    assert saved["loop"]["step"] == 5 + 3
    model, result, sink = fit(tmp_path, resume="auto", checkpoint_every_n_steps=None)
    assert_same_run(reference, model, result, [crashed, sink])


class ImpatientStore(LocalCheckpointStore):
    """Sends SIGINT to this process in the middle of a save: after the data is written, before the commit."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.armed = False

    def _write_manifest(self, manifest):
        if self.armed and manifest["pending"]:
            self.armed = False
            os.kill(os.getpid(), signal.SIGINT)
        super()._write_manifest(manifest)


def test_a_second_signal_during_the_save_corrupts_nothing(tmp_path, reference):
    store = ImpatientStore(tmp_path)

    def first_signal():
        store.armed = True
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as interrupted:
        fit(tmp_path, store=store, hooks=[Crash(0, 5, action=first_signal)])
    assert interrupted.value.exit_code == 143  # the first signal decides
    assert not store.armed  # the SIGINT really arrived during the save
    assert store.latest() == "last" and read_checkpoint(tmp_path / "last.pt")["loop"]["position"] == {"epoch": 0, "batch": 6}
    model, result, sink = fit(tmp_path, resume="auto")
    assert all(torch.equal(reference[0][k], v) for k, v in model.state_dict().items())


def test_a_corrupt_checkpoint_fails_by_name_before_anything_is_touched(tmp_path):
    fit(tmp_path, max_epochs=1)
    path = tmp_path / "last.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    model, sink = dropout_model(5), RecordingSink()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or truncated"):
        trainer(tmp_path / "other", resume=str(path), sink=sink).fit(model, *loaders())
    assert not sink.started
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_missing_a_component_fails_loudly(tmp_path):
    fit(tmp_path, max_epochs=1)
    partial = read_checkpoint(tmp_path / "last.pt")
    del partial["rng"], partial["optimizer"]
    store = LocalCheckpointStore(tmp_path / "partial")
    store.save(partial, ["last"], meta={"epoch": 1, "batch": 0, "step": 5})
    model, sink = dropout_model(5), RecordingSink()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match=r"lacks optimizer, rng; refusing to resume from part of a state"):
        trainer(tmp_path / "partial", resume="auto", sink=sink, store=store).fit(model, *loaders())
    assert not sink.started
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_auto_with_no_checkpoint_starts_fresh(tmp_path, reference):
    model, result, _ = fit(tmp_path, resume="auto")
    assert all(torch.equal(reference[0][k], v) for k, v in model.state_dict().items())


def test_an_early_stopped_run_resumes_as_stopped(tmp_path):
    goal = lambda: PatienceStopper(monitor="val/accuracy", mode="max", goal=0.5, patience=50)  # noqa: E731
    _, first, _ = fit(tmp_path, max_epochs=10, stopper=goal())
    assert first.stop_reason == "goal" and first.epochs_completed < 10
    _, second, sink = fit(tmp_path, max_epochs=10, stopper=goal(), resume="auto")
    assert (second.stop_reason, second.epochs_completed, second.steps) == ("goal", first.epochs_completed, first.steps)
    assert not sink.series("train/loss")  # nothing was trained again
    # Extended, the stopper judges the new epochs from its saved state: the goal is still met after one.
    _, third, sink = fit(tmp_path, max_epochs=12, stopper=goal(), resume="auto")
    assert (third.stop_reason, third.epochs_completed) == ("goal", first.epochs_completed + 1)
    assert third.extended_from == {"trainer.max_epochs": 10} and sink.series("train/loss")


def test_settings_are_checked_with_the_key_and_value():
    for build, message in [
        (lambda: Cadence(every_n_epochs=0), "checkpoint.every_n_epochs=0 must be an integer >= 1"),
        (lambda: Cadence(every_n_steps=0), "checkpoint.every_n_steps=0 must be an integer >= 1"),
        (lambda: LocalCheckpointStore("unused", keep_last=-1), "store.keep_last=-1 must be an integer >= 1"),
        (lambda: SkipNonFinite(0), "nonfinite.max_in_a_row=0 must be an integer >= 1"),
        (lambda: TrainerSettings(resume=" "), "trainer.resume=' ' must be null, 'auto' or a checkpoint path"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            build()
    with pytest.raises(ConfigError, match=r"trainer.resume='auto' needs a checkpoint store"):
        make_trainer(settings=TrainerSettings(resume="auto", device="cpu")).fit(dropout_model(), loaders()[0])


# non-finite steps ------------------------------------------------------------------------------
class PoisonedLoss(Classification):
    """Returns a NaN loss on the listed micro-batch calls (counted from 0), or on all of them."""

    def __init__(self, calls=None) -> None:
        super().__init__()
        self.calls, self.count = calls, 0

    def training_loss(self, model, batch):
        loss = super().training_loss(model, batch)
        poisoned = self.calls is None or self.count in self.calls
        self.count += 1
        return loss * float("nan") if poisoned else loss


def plain_fit(objective, sink=None, hooks=(), nonfinite="skip", max_nonfinite=10, **settings):
    options = dict(max_epochs=2, device="cpu", log_every_n_steps=1)
    options.update(settings)
    model = dropout_model()
    train, val = loaders()
    policy = SkipNonFinite(max_nonfinite) if nonfinite == "skip" else nonfinite_policy(nonfinite)
    result = make_trainer(objective=objective, settings=TrainerSettings(**options), sink=sink or RecordingSink(),
                          nonfinite=policy,
                          lr_policy=WarmupCosine(warmup_steps=3), hooks=hooks,
                          stopping_policy=PatienceStopper(patience=50)).fit(model, train, val)
    return model, result


def test_nonfinite_skip_skips_the_optimizer_and_schedule_step_and_counts_it():
    params_seen = []

    class Watch:
        def on_batch_end(self, state, loss):
            params_seen.append([p.detach().clone() for p in state.model.parameters()])

    sink = RecordingSink()
    model, result = plain_fit(PoisonedLoss({3, 4, 12}), sink=sink, hooks=[Watch()])
    assert result.steps == 20 - 3
    skips = [(r.step, r.metrics["train/skipped_steps"]) for r in sink.records if "train/epoch_loss" not in r.metrics
             and "train/skipped_steps" in r.metrics]
    assert skips == [(3, 1), (3, 2), (10, 3)]  # logged when they happen, at the step count reached so far
    assert result.history[-1]["train/skipped_steps"] == 3
    # The poisoned micro-batch 3 left the weights as they were for micro-batch 4.
    assert all(torch.equal(a, b) for a, b in zip(params_seen[3], params_seen[4]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The schedule waits on skipped steps: taken step k used the lr of scheduled step k.
    expected = preview(WarmupCosine(warmup_steps=3), lr=0.1, steps_per_epoch=10, max_epochs=2)[:17]
    assert [lr for _, lr in sink.series("train/lr")] == pytest.approx(expected)


def test_nonfinite_skip_stops_after_k_in_a_row():
    sink = RecordingSink()
    with pytest.raises(NonFiniteError, match=r"3 optimizer steps in a row .*nonfinite.max_in_a_row=3"):
        plain_fit(PoisonedLoss(), sink=sink, max_nonfinite=3)
    assert sink.status == "failed"
    assert [value for _, value in sink.series("train/skipped_steps")] == [1, 2, 3]


def test_nonfinite_raise_stops_at_once():
    with pytest.raises(NonFiniteError, match=r"nonfinite=raise"):
        plain_fit(PoisonedLoss({2}), nonfinite="raise")


def test_non_finite_parameters_are_never_saved(tmp_path):
    class Diverge:
        def on_epoch_end(self, state, metrics):
            if state.epoch == 1:
                with torch.no_grad():
                    next(state.model.parameters())[0, 0] = float("inf")

    with pytest.raises(NonFiniteError, match="refusing to save"):
        fit(tmp_path, hooks=[Diverge()])
    saved = read_checkpoint(tmp_path / "last.pt")
    assert saved["loop"]["position"] == {"epoch": 1, "batch": 10}  # the last good one, written mid epoch 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


@pytest.mark.parametrize(("values", "dtype", "refused"), [
    ([1.0, float("nan"), 2.0], torch.float32, True),
    ([float("inf"), float("-inf"), 0.0], torch.float32, True),  # the sum is NaN
    ([1.0, float("-inf")], torch.bfloat16, True),
    ([60000.0] * 4, torch.float16, False),  # their sum overflows float16: summed in float32
    ([3e38, 3e38, -1.0], torch.float32, False),  # their float32 sum overflows: checked element by element
    ([1e308, 1e308], torch.float64, False),
])
def test_the_finite_check_before_a_save_refuses_exactly_the_non_finite(values, dtype, refused):
    from trainwire.checkpointing.parts import finite

    weights = {"w": torch.tensor(values, dtype=dtype), "steps": torch.tensor([3, 4])}
    if refused:
        with pytest.raises(NonFiniteError, match="refusing to save"):
            finite(weights)
    else:
        assert finite(weights) is weights


def test_a_non_finite_value_is_never_the_best():
    stopper = PatienceStopper(monitor="val/loss", patience=5)
    stopper.update(0, {"val/loss": 1.0})
    assert not stopper.update(1, {"val/loss": float("nan")}).improved
    assert not stopper.update(2, {"val/loss": float("-inf")}).improved
    assert stopper.best_value == 1.0 and stopper.best_epoch == 0


def test_the_sampler_fast_forwards_without_loading_the_skipped_batches():
    loaded = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 100

        def __getitem__(self, index):
            loaded.append(index)
            return torch.tensor([float(index)])

    def epoch(number, start=0):
        sampler = ResumableSampler(100, 8, seed=7)
        loader = DataLoader(Counting(), batch_sampler=sampler)
        from trainwire.data import epoch_batches

        return [batch.flatten().long().tolist() for batch in epoch_batches(loader, number, start)]

    full = epoch(3)
    assert len(full) == 13 and sorted(sum(full, [])) == list(range(100))
    assert epoch(3) == full and epoch(4) != full  # the order is a function of seed and epoch only
    loaded.clear()
    assert epoch(3, start=10) == full[10:]
    assert len(loaded) == 100 - 80  # only the 3 batches after the skipped 10 were read


def test_the_container_keeps_checkpoints_in_the_run_directory_and_resumes_from_them(tmp_path):
    import yaml
    from dependency_injector import providers

    from trainwire.config import compose
    from trainwire.containers import build_container, run

    def job(run_dir, *extra):
        return build_container(compose([f"run_dir={run_dir}", "trainer.max_epochs=2", "lr.warmup_epochs=1",
                                        "checkpoint.every_n_steps=4", *extra]))

    expected = run(job(tmp_path / "whole"))
    crashing = job(tmp_path / "cut")
    with crashing.hooks.override(providers.List(providers.Object(Crash(1, 9)))):
        with pytest.raises(RuntimeError, match="crash"):
            run(crashing)
    saved = read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert saved["loop"]["position"] == {"epoch": 1, "batch": 9}  # step 32, the last multiple of 4: 23 in epoch 0, 9 in 1
    assert yaml.safe_load(saved["config_yaml"])["run_dir"] == str(tmp_path / "cut")
    assert saved["versions"]["torch"] == str(torch.__version__)
    resumed = run(job(tmp_path / "cut", "trainer.resume=auto"))
    assert [h["val/loss"] for h in resumed.history] == [h["val/loss"] for h in expected.history]
    with pytest.raises(ConfigError, match=r"nonfinite='ignore' is not an option; choose one of: custom, off, raise, skip"):
        job(tmp_path / "bad", "nonfinite=ignore")


def test_fit_off_the_main_thread_installs_no_handlers_and_still_checkpoints(tmp_path):
    import threading

    outcome = {}

    def work():
        try:
            outcome["result"] = fit(tmp_path, max_epochs=1)[1]
        except BaseException as error:  # noqa: BLE001 - reported to the test thread below
            outcome["error"] = error

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].epochs_completed == 1
    assert signal.getsignal(signal.SIGTERM) is previous
    assert read_checkpoint(tmp_path / "last.pt")["loop"]["position"] == {"epoch": 1, "batch": 0}


def test_every_rng_survives_a_weights_only_round_trip(tmp_path):
    import importlib.util
    import random

    from trainwire.checkpointing.parts import RNGPart

    def draw():
        values = [random.random(), torch.rand(3).tolist()]
        if importlib.util.find_spec("numpy") is not None:
            import numpy

            values.append(numpy.random.rand(3).tolist())
        return values

    torch.save(RNGPart().state_dict(), tmp_path / "rng.pt")
    expected = draw()
    draw()
    RNGPart().load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def test_resume_from_a_given_periodic_file_continues_exactly(tmp_path, reference):
    fit(tmp_path / "first")  # checkpoint_every=1, keep_last=2: epoch-0001.pt and epoch-0002.pt are kept
    assert not (tmp_path / "first" / "epoch-0000.pt").exists()
    model, result, sink = fit(tmp_path / "second", resume=str(tmp_path / "first" / "epoch-0001.pt"))
    assert all(torch.equal(reference[0][k], v) for k, v in model.state_dict().items())
    assert [step for step, _ in sink.series("train/loss")][0] == 11  # epoch 2's first step: 5 steps an epoch
    assert [h["val/loss"] for h in result.history] == [h["val/loss"] for h in reference[1].history]


def test_resuming_under_a_different_plan_is_refused_before_anything_is_touched(tmp_path):
    fit(tmp_path, max_epochs=2)
    model, sink = dropout_model(5), RecordingSink()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match=r"planned with trainer.max_epochs=2, this run has 1: a run can be "
                                              r"extended, not shortened; resume with trainer.max_epochs >= 2"):
        trainer(tmp_path, resume="auto", sink=sink, max_epochs=1).fit(model, *loaders())
    with pytest.raises(CheckpointError, match=r"planned with trainer.accumulate_steps=2, this run has 1: .* or start "
                                              r"a new run from its weights with trainer.init_from="):
        trainer(tmp_path, resume="auto", sink=sink, max_epochs=2, accumulate_steps=1).fit(model, *loaders())
    assert not sink.started
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_best_pt_holds_the_best_epoch_and_last_pt_the_end(tmp_path):
    stopper = ScriptedStopper(improved=[1], monitor=None)
    model, result, _ = fit(tmp_path, stopper=stopper)
    best, last = read_checkpoint(tmp_path / "best.pt"), read_checkpoint(tmp_path / "last.pt")
    assert best["loop"]["position"] == {"epoch": 2, "batch": 0} and last["loop"]["position"] == {"epoch": EPOCHS, "batch": 0}
    assert all(torch.equal(best["model"][k], v) for k, v in model.state_dict().items())  # fit restored the best
    assert not all(torch.equal(last["model"][k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(last["loop"]["best_model"][k], v) for k, v in model.state_dict().items())


def test_a_finished_run_extended_to_6_epochs_logs_the_lr_of_a_run_planned_for_6(tmp_path, caplog):
    """Train longer (ADR 0031): the record goes on, and from the extension on every step's lr is the 6-epoch plan's
    (the packaged preset's warmup is a ratio of the run: re-planning moves the warmup's end too)."""
    import json

    from trainwire.config import compose
    from trainwire.containers import build_container, run
    from trainwire.testing import read_metrics

    def job(run_dir, epochs, *extra):
        return run(build_container(compose([f"run_dir={run_dir}", f"trainer.max_epochs={epochs}", "data.batch_size=256",
                                            "trainer.log_every_n_steps=1", "stopping=none", *extra])))

    planned = job(tmp_path / "six", 6)
    job(tmp_path / "run", 3)
    first = read_metrics(tmp_path / "run")
    with caplog.at_level("INFO", logger="trainwire"):
        extended = job(tmp_path / "run", 6, "trainer.resume=auto")
    lrs = {row["step"]: row["train/lr"] for row in read_metrics(tmp_path / "six") if "train/lr" in row}
    rows = read_metrics(tmp_path / "run")
    assert rows[:len(first)] == first  # the record goes on from where it stopped
    later = {row["step"]: row["train/lr"] for row in rows[len(first):] if "train/lr" in row}
    assert min(later) == max(row["step"] for row in first) + 1 and max(later) == max(lrs)
    assert later == {step: lrs[step] for step in later}
    assert [row["epoch"] for row in rows if "val/loss" in row] == list(range(6))
    assert (extended.epochs_completed, extended.steps) == (6, planned.steps)
    assert [row["epoch"] for row in extended.history] == list(range(6))  # FitResult.history rows say their epoch
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert events[0]["event"] == "run_folder" and events[-1]["event"] == "run_end"
    assert events[0]["run_dir"] == events[-1]["run_dir"] == str(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["extended_from"] == {"trainer.max_epochs": 3} and summary["epochs_completed"] == 6
    assert [r.msg["changes"] for r in caplog.records if r.msg.get("event") == "run_extended"] == ["trainer.max_epochs: 3 -> 6"]
    with pytest.raises(ConfigError, match=r"trainer.max_epochs: 6 -> 4 \(a run can be extended, not shortened\)"):
        job(tmp_path / "run", 4, "trainer.resume=auto")


def test_a_run_is_extended_from_its_file_into_a_new_folder(tmp_path):
    """The issue's second refusal: `trainer.resume=<its last.pt>` with more epochs, in another folder, goes on too."""
    _, first, _ = fit(tmp_path / "first")
    _, longer, sink = fit(tmp_path / "longer", resume=str(tmp_path / "first" / "last.pt"), max_epochs=EPOCHS + 1)
    assert (longer.epochs_completed, longer.extended_from) == (EPOCHS + 1, {"trainer.max_epochs": EPOCHS})
    assert min(step for step, _ in sink.series("train/loss")) == first.steps + 1
