"""A sink that raises, hangs or cannot be imported never ends, changes or stalls training (ADR 0010)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time

import pytest
import torch
from dependency_injector import providers

from trainwire import IsolatedSink, NullSink
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.testing import (
    BlockingSink,
    FailingSink,
    RecordingSink,
    SlowSink,
    capture_logs,
    read_metrics,
)

# 2 epochs of 6 steps (data.batch_size=256 over 1,437 digits), a record every step: 12 step
# records and 2 epoch records, then the summary and finish.
OVERRIDES = ["trainer.max_epochs=2", "lr.warmup_epochs=1", "data.batch_size=256", "trainer.log_every_n_steps=1"]
LOGS = 14


def fit(run_dir, sink, *extra):
    """Runs the packaged job with ``sink`` in the metrics_sink slot; returns the trained model, result and warnings."""
    container = build_container(compose([f"run_dir={run_dir}", *OVERRIDES, *extra]))
    torch.manual_seed(0)
    model = container.model()
    with container.metrics_sink.override(sink), container.model.override(providers.Object(model)):
        with capture_logs() as logs:
            started = time.perf_counter()
            result = run(container)
            elapsed = time.perf_counter() - started
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    return model, result, warnings, elapsed


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline")
    model, result, warnings, elapsed = fit(run_dir, NullSink())
    assert not warnings
    return copy.deepcopy(model.state_dict()), read_metrics(run_dir), result, elapsed


def assert_same_training(model, result, run_dir, baseline, name):
    state, expected, expected_result, _ = baseline
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # bit for bit
    got = read_metrics(run_dir)
    assert len(got) == len(expected) + 1  # every record, then one line of dropped counts
    for line, reference in zip(got, expected):
        assert {k: v for k, v in line.items() if not k.startswith("time/")} == \
               {k: v for k, v in reference.items() if not k.startswith("time/")}
    assert set(got[-1]) == {"step", "epoch", f"sink/{name}/dropped"}
    assert result.history[-1]["val/loss"] == expected_result.history[-1]["val/loss"]
    return got[-1][f"sink/{name}/dropped"]


# The failing call, and how many later calls are dropped: every later log, then summary and finish.
FAILURES = [("start", LOGS + 2), ("log", LOGS - 1 + 2), ("summary", 1), ("finish", 0)]


@pytest.mark.parametrize(("on", "dropped"), FAILURES)
def test_a_sink_that_raises_is_isolated(tmp_path, baseline, on, dropped):
    sink = FailingSink(on=on)
    model, result, warnings, _ = fit(tmp_path, sink)
    assert result.epochs_completed == 2
    assert [(w["event"], w["sink"], w["call"]) for w in warnings] == [("sink_failed", "failing", on)]
    assert warnings[0]["error"] == f"RuntimeError: failing sink: {on} failed"
    assert assert_same_training(model, result, tmp_path, baseline, "failing") == dropped
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sink/failing/dropped"] == dropped
    assert summary["sink/failing/error"] == f"{on}: RuntimeError: failing sink: {on} failed"
    assert len(sink.records) == (LOGS if on in ("summary", "finish") else 0)


@pytest.mark.parametrize(("on", "dropped"), FAILURES)
def test_a_sink_that_blocks_past_the_timeout_is_abandoned(tmp_path, baseline, on, dropped):
    sink = BlockingSink(seconds=60, on=on)
    try:  # 2 s, not less: on a loaded machine the calls queued before the blocked one need time to get through
        model, result, warnings, elapsed = fit(tmp_path, sink, "sink_timeout_s=2")
    finally:
        sink.release()
    assert elapsed < 20  # not the 60 s the sink would hold the loop for
    assert [(w["event"], w["sink"], w["call"]) for w in warnings] == [("sink_failed", "blocking", on)]
    assert warnings[0]["error"] == f"TimeoutError: {on} did not return within sink_timeout_s=2"
    assert assert_same_training(model, result, tmp_path, baseline, "blocking") == dropped
    assert json.loads((tmp_path / "summary.json").read_text())["sink/blocking/dropped"] == dropped


def test_a_slow_sink_within_the_timeout_gets_everything(tmp_path, baseline):
    sink = BlockingSink(seconds=0.3, on="log")  # slower than the loop, but each call returns in time
    model, result, warnings, _ = fit(tmp_path, sink, "sink_timeout_s=5")
    assert not warnings and sink.status == "finished"
    assert len(sink.records) == LOGS and sink.summary_values["epochs_completed"] == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sink/blocking/dropped"] == 0 and "sink/blocking/error" not in summary
    assert len(read_metrics(tmp_path)) == LOGS  # no line of dropped counts when nothing failed


def test_one_failing_sink_leaves_the_others_whole(tmp_path, baseline):
    good, bad = RecordingSink(), FailingSink(on="log", after=3)
    from trainwire import FanOut

    model, result, warnings, _ = fit(tmp_path, FanOut(good, bad))
    assert [w["sink"] for w in warnings] == ["failing"]
    assert len(good.records) == LOGS and good.status == "finished"
    assert len(bad.records) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sink/recording/dropped"] == 0 and summary["sink/failing/dropped"] == LOGS - 4 + 2


def test_a_sink_whose_library_is_missing_is_isolated(tmp_path, baseline):
    container_cfg = [f"run_dir={tmp_path}", *OVERRIDES, "+sink.ghost={_target_: trainwire.testing.MissingLibrarySink}"]
    container = build_container(compose(container_cfg))
    torch.manual_seed(0)
    model = container.model()
    with container.model.override(providers.Object(model)), capture_logs() as logs:
        result = run(container)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["sink"], w["call"]) for w in warnings] == [("ghost", "start")]
    assert "No module named 'trainwire_no_such_library'" in warnings[0]["error"]
    assert assert_same_training(model, result, tmp_path, baseline, "ghost") == LOGS + 2


def test_a_real_sink_without_its_library_installed(tmp_path):
    """tensorboard made unimportable in a fresh interpreter: sink=tensorboard still trains and records."""
    code = f"""
import sys
from trainwire.testing import capture_logs
sys.modules["tensorboard"] = None  # what `import tensorboard` meets when it is not installed
from trainwire.config import compose
from trainwire.containers import run
with capture_logs() as logs:
    result = run(compose(["run_dir={tmp_path}", "sink=tensorboard", {", ".join(repr(o) for o in OVERRIDES)}]))
print([(e["sink"], e["call"], e["error"][:42]) for e in logs if e["log_level"] == "warning"])
print(result.epochs_completed)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [
        "[('tensorboard', 'start', 'ModuleNotFoundError: import of tensorboard')]", "2"]
    assert len(read_metrics(tmp_path)) == LOGS + 1
    assert not (tmp_path / "tensorboard").exists()


def test_hung_sinks_finish_together_within_one_timeout(tmp_path):
    from trainwire import FanOut, GuardedFanOut, JsonlSink

    hung = [BlockingSink(seconds=60, on="finish") for _ in range(4)]
    sink = GuardedFanOut(JsonlSink(tmp_path), FanOut(*hung), timeout_s=1)
    try:
        sink.start()
        sink.log({"train/loss": 1.0}, step=1, epoch=0)
        started = time.perf_counter()
        with capture_logs() as logs:
            sink.finish()
        elapsed = time.perf_counter() - started
    finally:
        for blocking in hung:
            blocking.release()
    assert 1 <= elapsed < 3.5  # one timeout for all four, not four in a row (>= 4 s); a margin for a loaded machine
    names = ["blocking", "blocking-2", "blocking-3", "blocking-4"]
    assert sorted(entry["sink"] for entry in logs) == names
    assert read_metrics(tmp_path)[-1] == {"step": 1, "epoch": 0, **{f"sink/{name}/dropped": 0 for name in names}}


def fit_within(seconds, run_dir, sink, *extra):
    """``fit`` on a thread, given ``seconds`` to end: a run that hangs fails the test instead of hanging it."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(done=fit(run_dir, sink, *extra)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the run did not end within {seconds} s"
    return outcome["done"]


@pytest.mark.parametrize(("on", "error", "dropped"), [("log", SystemExit(3), LOGS - 1 + 2),
                                                      ("finish", KeyboardInterrupt(), 0)])
def test_a_sink_that_raises_systemexit_or_keyboardinterrupt_is_isolated(tmp_path, baseline, on, error, dropped):
    """Before: the worker caught only Exception, its thread died and finish waited for it forever."""
    model, result, warnings, elapsed = fit_within(60, tmp_path, FailingSink(on=on, error=error), "sink_timeout_s=2")
    assert elapsed < baseline[3] + 2 + 5  # the run, then at most sink_timeout_s and a grace
    assert [(w["event"], w["sink"], w["call"]) for w in warnings] == [("sink_failed", "failing", on)]
    assert assert_same_training(model, result, tmp_path, baseline, "failing") == dropped
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sink/failing/error"] == f"{on}: {type(error).__name__}: {error}"


def test_a_slow_sink_delays_the_end_by_at_most_the_timeout_and_its_drops_are_counted(tmp_path, baseline):
    """Before: finish drained the whole backlog (14 calls of 1 s here), with no drop counted and no warning."""
    sink = SlowSink(seconds=1.0)  # each call returns well within sink_timeout_s
    model, result, warnings, elapsed = fit(tmp_path, sink, "sink_timeout_s=2")
    assert elapsed < baseline[3] + 2 + 4, elapsed  # the sinkless run, sink_timeout_s, a grace (the backlog is ~11 s)
    assert [(w["event"], w["sink"], w["call"]) for w in warnings] == [("sink_failed", "slow", "finish")]
    assert "queued calls were not delivered within sink_timeout_s=2" in warnings[0]["error"]
    dropped = assert_same_training(model, result, tmp_path, baseline, "slow")
    # 14 logs, summary and finish: each delivered or counted, but for the one still in the sink at the end.
    assert dropped >= LOGS + 2 - 5 and LOGS + 1 <= dropped + len(sink.records) <= LOGS + 2
    assert json.loads((tmp_path / "summary.json").read_text())["sink/slow/dropped"] == dropped


def test_a_full_queue_drops_the_oldest_log_calls_counted_with_one_warning():
    blocked = BlockingSink(seconds=30, on="log")
    sink = IsolatedSink(blocked, timeout_s=30, max_queued=3)
    with capture_logs() as logs:
        sink.start()
        sink.log({"x": 0.0}, step=0, epoch=0)
        deadline = time.monotonic() + 30
        while not blocked.blocked and time.monotonic() < deadline:  # the worker is inside log 0
            time.sleep(0.01)
        for step in range(1, 10):
            sink.log({"x": float(step)}, step=step, epoch=0)
        sink.summary({"done": 1})  # queued: 8, 9, summary
        threading.Timer(0.3, blocked.release).start()
        sink.finish()  # queued while the worker is still held: it drops log 8
    assert [entry["event"] for entry in logs] == ["sink_lagging"]
    assert [record.step for record in blocked.records] == [0, 9]  # the newest kept, in order
    assert blocked.summary_values == {"done": 1} and blocked.status == "finished"
    assert sink.dropped == 8 and sink.failure is None
