"""The loop: accumulation, hooks, counters, the best state, errors before any work, precision."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from conftest import batches, blobs, make_model, make_trainer, nonfinite_policy

from trainwire import (
    Classification,
    ConfigError,
    NormClipper,
    PatienceStopper,
    Regression,
    TrainerSettings,
)
from trainwire.testing import RecordingHook, RecordingSink, ScriptedStopper


def test_fit_trains_and_returns_a_result(task):
    train, val = task
    sink = RecordingSink()
    model = make_model()
    result = make_trainer(sink=sink, settings=TrainerSettings(max_epochs=5, device="cpu")).fit(model, train, val)
    assert result.epochs_completed == 5 and result.stop_reason == "max_epochs"
    assert result.steps == 5 * len(train)
    assert len(result.history) == 5
    assert result.history[-1]["val/accuracy"] > 0.9
    assert result.history[-1]["train/epoch_loss"] < result.history[0]["train/epoch_loss"]
    assert sink.started and sink.status == "finished"
    assert sink.summary_values["epochs_completed"] == 5


def test_accumulation_equals_one_big_batch():
    """Two micro-batches of 8 with accumulate_steps=2 take the same step as one batch of 16."""
    x, y = blobs(n=64)
    small, big = batches(x, y, 8), batches(x, y, 16)
    results = []
    for data, accumulate in ((small, 2), (big, 1)):
        model = make_model(seed=1)
        settings = TrainerSettings(max_epochs=2, accumulate_steps=accumulate, device="cpu", log_every_n_steps=1)
        sink = RecordingSink()
        make_trainer(settings=settings, sink=sink).fit(model, data)
        results.append((model, sink))
    (acc_model, acc_sink), (big_model, big_sink) = results
    for a, b in zip(acc_model.parameters(), big_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [s for s, _ in acc_sink.series("train/loss")] == [s for s, _ in big_sink.series("train/loss")]
    losses = [v for _, v in acc_sink.series("train/loss")]
    assert losses == pytest.approx([v for _, v in big_sink.series("train/loss")], rel=1e-5)


def test_short_last_window_still_steps_with_its_own_scale():
    x, y = blobs(n=40)
    data = batches(x, y, 8)  # 5 micro-batches, accumulate 2: windows of 2, 2, 1
    sink = RecordingSink()
    settings = TrainerSettings(max_epochs=1, accumulate_steps=2, device="cpu", log_every_n_steps=1)
    result = make_trainer(settings=settings, sink=sink).fit(make_model(), data)
    assert result.steps == 3
    assert [step for step, _ in sink.series("train/loss")] == [1, 2, 3]


def test_hooks_see_every_event_in_order(task):
    train, val = task
    hook = RecordingHook()
    make_trainer(hooks=[hook], settings=TrainerSettings(max_epochs=2, device="cpu")).fit(make_model(), train, val)
    names = [name for name, _, _ in hook.events]
    n = len(train)
    epoch = ["on_epoch_start"] + ["on_batch_end"] * n + ["on_validation_end", "on_epoch_end"]
    assert names == ["on_train_start"] + epoch * 2 + ["on_train_end"]
    assert [step for name, _, step in hook.events if name == "on_epoch_end"] == [n, 2 * n]


def test_on_exception_runs_and_the_sink_finishes_failed(task):
    train, _ = task

    class Boom:
        def on_epoch_end(self, state, metrics):
            raise RuntimeError("boom")

    hook, sink = RecordingHook(), RecordingSink()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(hooks=[hook, Boom()], sink=sink).fit(make_model(), train)
    assert hook.events[-1][0] == "on_exception"
    assert sink.status == "failed"


def test_logs_only_every_n_steps_with_the_lr_the_step_used(task):
    train, _ = task
    sink = RecordingSink()
    settings = TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=5)
    make_trainer(settings=settings, sink=sink).fit(make_model(), train)
    steps = [step for step, _ in sink.series("train/loss")]
    assert steps == list(range(5, 2 * len(train) + 1, 5))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped"} <= set(sink.records[0].metrics)
    assert all(lr == 0.1 for _, lr in sink.series("train/lr"))
    epoch_records = [r for r in sink.records if "train/epoch_loss" in r.metrics]
    assert [(r.step, r.epoch) for r in epoch_records] == [(len(train), 0), (2 * len(train), 1)]


def test_best_state_is_restored_from_the_scripted_best_epoch(task):
    train, val = task
    snapshots = []

    class Snapshot:
        def on_epoch_end(self, state, metrics):
            snapshots.append(copy.deepcopy(state.model.state_dict()))

    model = make_model()
    stopper = ScriptedStopper(improved=[1], stop_at=3)
    result = make_trainer(stopping_policy=stopper, hooks=[Snapshot()],
                          settings=TrainerSettings(max_epochs=10, device="cpu")).fit(model, train, val)
    assert result.epochs_completed == 4 and result.stop_reason == "scripted" and result.best_epoch == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key
    assert not torch.equal(snapshots[1]["0.weight"], snapshots[3]["0.weight"])


def test_early_stopping_restores_the_best_weights_whose_val_loss_is_best_value():
    # A regression task that overfits: few noisy samples, a wide net, a high learning rate.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 4, generator=g)
    y = x[:, :1] + 0.8 * torch.randn(48, 1, generator=g)
    train, val = batches(x[:24], y[:24], 8), batches(x[24:], y[24:], 24)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    trainer = make_trainer(
        objective=Regression(), optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        stopping_policy=PatienceStopper(monitor="val/loss", mode="min", patience=4),
        settings=TrainerSettings(max_epochs=200, device="cpu"),
    )
    result = trainer.fit(model, train, val)
    assert result.stop_reason == "patience"
    assert result.epochs_completed == result.best_epoch + 1 + 4  # exactly `patience` epochs without improvement
    losses = [h["val/loss"] for h in result.history]
    assert result.best_value == min(losses) and losses[-1] > result.best_value
    model.eval()
    with torch.no_grad():
        after = Regression().evaluate(model, val)["loss"]
    assert after == pytest.approx(result.best_value, rel=1e-6)


def test_goal_stops_as_soon_as_reached(task):
    train, val = task
    stopper = PatienceStopper(monitor="val/accuracy", mode="max", patience=100, goal=0.9)
    result = make_trainer(stopping_policy=stopper, settings=TrainerSettings(max_epochs=50, device="cpu")).fit(
        make_model(), train, val
    )
    assert result.stop_reason == "goal"
    accuracies = [h["val/accuracy"] for h in result.history]
    assert accuracies[-1] >= 0.9 and all(a < 0.9 for a in accuracies[:-1])


def test_without_validation_a_val_monitor_fails_before_any_work(task):
    train, _ = task
    sink = RecordingSink()
    with pytest.raises(ConfigError, match=r"stopping.monitor='val/loss' needs validation data"):
        make_trainer(stopping_policy=PatienceStopper(), sink=sink).fit(make_model(), train)
    assert not sink.started


def test_without_validation_trains_to_max_epochs_and_can_monitor_train_loss(task):
    train, _ = task
    stopper = PatienceStopper(monitor="train/epoch_loss", patience=50)
    result = make_trainer(stopping_policy=stopper, settings=TrainerSettings(max_epochs=4, device="cpu")).fit(
        make_model(), train
    )
    assert result.epochs_completed == 4 and result.stop_reason == "max_epochs"
    assert all(not any(k.startswith("val/") for k in h) for h in result.history)


def test_empty_training_data_is_a_clear_error_before_any_work():
    sink = RecordingSink()
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"train_data is empty \(0 batches\)"):
        make_trainer(sink=sink).fit(model, [])
    assert not sink.started
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="val_data is empty"):
        make_trainer().fit(model, [(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))], [])


def test_clipping_bounds_the_update(task):
    """With SGD lr=1 and no momentum, the parameter change of one step is the clipped gradient."""
    train, _ = task
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    sink = RecordingSink()
    x, y = train[0]
    big = [(x * 100, y)]  # large inputs: gradients far above the clip
    trainer = make_trainer(optimizer=functools.partial(torch.optim.SGD, lr=1.0), gradient_policy=NormClipper(0.5),
                           sink=sink, settings=TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=1))
    trainer.fit(model, big)
    change = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    record = sink.records[0].metrics
    assert record["train/grad_norm"] > 0.5
    assert record["train/grad_norm_clipped"] == pytest.approx(0.5, rel=1e-4)
    assert change.item() == pytest.approx(0.5, rel=1e-4)
    # Under the clip the policy leaves the gradients as they are, and the logged norms agree.
    sink = RecordingSink()
    make_trainer(gradient_policy=NormClipper(1e6), sink=sink,
                 settings=TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=1)).fit(make_model(), big)
    record = sink.records[0].metrics
    assert record["train/grad_norm_clipped"] == pytest.approx(record["train/grad_norm"], rel=1e-6) != 0


def test_fp16_without_cuda_falls_back_to_32_with_one_warning(task):
    train, _ = task
    settings = TrainerSettings(max_epochs=1, precision="16", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(settings=settings).fit(make_model(), train)
    fallback = [w for w in caught if "trainer.precision=16 needs CUDA" in str(w.message)]
    assert len(fallback) == 1


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights(task):
    train, val = task
    dtypes = []

    class Spy(Classification):
        def training_loss(self, model, batch):
            dtypes.append(model(batch[0]).dtype)
            return super().training_loss(model, batch)

    model = make_model()
    result = make_trainer(objective=Spy(), settings=TrainerSettings(max_epochs=3, precision="bf16", device="cpu")).fit(
        model, train, val
    )
    assert set(dtypes) == {torch.bfloat16}
    assert result.history[-1]["val/accuracy"] > 0.8
    assert all(param.dtype == torch.float32 for param in model.parameters())


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="trainer.max_epochs=0"):
        TrainerSettings(max_epochs=0)
    with pytest.raises(ConfigError, match="trainer.precision='8'"):
        make_trainer(settings=TrainerSettings(precision="8", device="cpu")).fit(make_model(), [(torch.zeros(1, 8), torch.zeros(1, dtype=torch.long))])


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that copy a tensor's value to the host (each one a device sync on CUDA)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("nonfinite", "monitor", "per_step", "per_log"),
                         [("off", False, 0, 0), ("off", True, 0, 1), ("skip", True, 1, 0), ("skip", False, 1, 0)])
def test_no_host_reads_on_steps_where_nothing_is_logged(task, nonfinite, monitor, per_step, per_log):
    """With the non-finite guard off nothing is read on unlogged steps; the guard reads exactly one value a step.

    The gradient monitor (on by default) reuses the guard's read; with the guard off it reads the
    norms it kept once, on logged steps. Throughput and the first step's FLOP count read nothing.
    """
    train, _ = task
    reads = _HostReads()
    per_batch = []

    class Probe:
        def on_batch_end(self, state, loss):
            per_batch.append((state.step, reads.count))

        def on_epoch_end(self, state, metrics):
            per_batch.append((state.step, reads.count))

    settings = TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=4, grad_monitor=monitor)
    with reads:
        make_trainer(gradient_policy=NormClipper(1.0), hooks=[Probe()], settings=settings,
                     nonfinite=nonfinite_policy(nonfinite)).fit(make_model(), train)
    # on_batch_end runs after the batch's optimizer step (state.step not yet counting it), before it
    # is logged, so the reads between entries k and k+1 are step k+1's log and step k+2's guard
    # (for the last, its log and the end of the epoch).
    added = {step: later - count for (step, count), (_, later) in zip(per_batch, per_batch[1:])}
    assert len(added) == len(train) == 12
    # Logged steps 4, 8, 12 read the loss, and the norm when the guard has not read it already (lr is a
    # float, and the clipped norm is worked out from the norm); the epoch's end reads its mean loss once;
    # every other step reads only what the guard reads.
    logged = 1 + (1 - per_step) + per_log
    assert added == {k: (logged if (k + 1) % 4 == 0 else 0) + (per_step if k < 11 else 1) for k in range(12)}
