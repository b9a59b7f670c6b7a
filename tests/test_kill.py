"""Real faults: kill -9 of a training run and of a checkpoint write, SIGTERM and SIGINT to the CLI.

Slow (each case starts training processes); they run in CI with the rest of the suite.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import start_trainwire
from forked_saves import save_in_killed_child

from trainwire.checkpointing.format import read_checkpoint, read_manifest, verify
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import CheckpointError
from trainwire.testing import read_metrics

pytestmark = pytest.mark.slow

JOB = ["trainer.max_epochs=3", "trainer.accumulate_steps=3", "checkpoint.every_n_steps=2",
       "checkpoint.every_n_epochs=1", "trainer.log_every_n_steps=1", "model.dropout=0.1", "lr.warmup_epochs=1",
       "log.format=json"]  # digits: 23 batches an epoch, 8 optimizer steps, the last window short
STEPS = 24
LOSSES = ("train/loss",)  # what each logged step records, to compare with the uninterrupted run
# GAN-style: digits in 23 batches an epoch, a generator step every 2 critic steps (11 an epoch, then 12: the
# phase carries over), the classification stage before epoch 0 and re-run after every epoch (goal 0.999).
GAN_JOB = ["experiment=gan", "trainer.max_epochs=4", "step.stage_epochs=1", "step.goal=0.999",
           "step.tolerance=0", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=3",
           "log.format=json"]
GAN_STEPS = 46
GAN_LOSSES = ("train/critic_grad_norm", "train/critic_loss", "train/generator_loss")  # the first only per step


def start(run_dir, *overrides: str, job: list[str] = JOB) -> subprocess.Popen:
    return start_trainwire(run_dir, *job, *overrides)


def wait_for_step(process: subprocess.Popen, run_dir, step: int, after: int, key: str = "train/loss") -> None:
    """Returns once a record of ``step`` (or later) appears beyond the first ``after`` records."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if any(r.get("step", 0) >= step and key in r for r in read_metrics(run_dir)[after:]):
            return
        assert process.poll() is None, f"the run ended before step {step}: {process.stderr.read()}"
        time.sleep(0.005)
    raise AssertionError(f"step {step} never came")


def wait_for_checkpoint(process: subprocess.Popen, run_dir) -> None:
    """Returns once the run folder holds a committed checkpoint."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if (read_manifest(run_dir / "checkpoints") or {}).get("files"):
                return
        except CheckpointError:  # read while being replaced
            pass
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()}"
        time.sleep(0.005)
    raise AssertionError("no checkpoint was committed")


def finish(run_dir, *overrides: str, job: list[str] = JOB) -> None:
    process = start(run_dir, *overrides, job=job)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def logged(run_dir, keys: tuple[str, ...]) -> list[tuple[int, tuple[float, ...]]]:
    return [(r["step"], tuple(r[key] for key in keys)) for r in read_metrics(run_dir) if keys[0] in r]


def run_reference(run_dir, steps: int, keys: tuple[str, ...], job: list[str]):
    """An uninterrupted run: its final parameters, each step's losses, and each epoch's metrics."""
    run_dir.parent.mkdir(exist_ok=True)
    finish(run_dir, job=job)
    losses = dict(logged(run_dir, keys))
    assert sorted(losses) == list(range(1, steps + 1))
    final = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    return final["model"], losses, [{k: v for k, v in h.items() if not k.startswith("time/")} for h in final["loop"]["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_reference(tmp_path_factory.mktemp("reference") / "run", STEPS, LOSSES, JOB)


@pytest.fixture(scope="module")
def gan_reference(tmp_path_factory):
    return run_reference(tmp_path_factory.mktemp("gan-reference") / "run", GAN_STEPS, GAN_LOSSES, GAN_JOB)


def assert_matches(reference, run_dir, keys: tuple[str, ...] = LOSSES) -> None:
    model, losses, history = reference
    final = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert all(torch.equal(model[k], v) for k, v in final["model"].items()), "final parameters differ"
    seen = {}
    steps = []
    for step, values in logged(run_dir, keys):
        assert values == losses[step], step
        seen[step] = values
        steps.append(step)
    assert seen == losses
    assert steps == sorted(losses), "a step is in the record more than once (or out of order)"
    epochs = [r["epoch"] for r in read_metrics(run_dir) if "val/loss" in r]
    assert epochs == sorted(set(epochs)), "an epoch's row is in the record more than once"
    assert [{k: v for k, v in h.items() if not k.startswith("time/")} for h in final["loop"]["history"]] == history


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_at_random_steps_then_resume_auto_is_exact(tmp_path, reference, workers):
    run_dir = tmp_path / "run"
    kills = sorted(random.Random().sample(range(2, STEPS - 1), 3))
    for step in kills:  # kill, resume and kill again further on, three times; then run to the end
        seen = len(read_metrics(run_dir))
        process = start(run_dir, f"data.num_workers={workers}", "trainer.resume=auto")
        wait_for_step(process, run_dir, step, after=seen)
        wait_for_checkpoint(process, run_dir)  # killed before any: resume=auto refuses the record (test_record)
        process.kill()
        process.wait()
        assert process.returncode == -signal.SIGKILL
    finish(run_dir, f"data.num_workers={workers}", "trainer.resume=auto")
    assert_matches(reference, run_dir)


@pytest.mark.parametrize(("signum", "code", "workers"), [(signal.SIGTERM, 143, 2), (signal.SIGINT, 130, 0)])
def test_a_stop_signal_saves_exits_with_its_code_and_resume_continues_exactly(tmp_path, reference, signum, code,
                                                                               workers):
    run_dir = tmp_path / "run"
    process = start(run_dir, f"data.num_workers={workers}", "checkpoint.every_n_steps=null")
    wait_for_step(process, run_dir, 10, after=0)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert "checkpoint saved in" in err
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    step_records = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert saved["loop"]["step"] == step_records[-1]  # the step in flight was finished and saved
    summary = json.loads((run_dir / "summary.json").read_text())  # a verdict for the run that did not finish
    assert (summary["status"], summary["resumable"], summary["steps"]) == ("interrupted", True, saved["loop"]["step"])
    finish(run_dir, f"data.num_workers={workers}", "trainer.resume=auto", "checkpoint.every_n_steps=null")
    assert_matches(reference, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_an_impatient_operator_s_sigterms_end_in_exit_143_with_the_checkpoint_saved(tmp_path):
    """SIGTERM, then SIGTERM again every 20 ms until the process ends: after fit put its handlers back,
    while the CLI reports, and while the interpreter exits. Before: a KeyboardInterrupt traceback, or death by
    signal (-15), depending on where the second one landed."""
    run_dir = tmp_path / "run"
    process = start(run_dir, "checkpoint.every_n_steps=null")
    wait_for_step(process, run_dir, 4, after=0)
    sent = 0
    while process.poll() is None and sent < 3000:
        process.send_signal(signal.SIGTERM)
        sent += 1
        time.sleep(0.02)
    _, err = process.communicate(timeout=300)
    assert sent > 1 and process.returncode == 143, (sent, process.returncode, err)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"trainwire: interrupted by SIGTERM; checkpoint saved in {run_dir / 'checkpoints'}"
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["loop"]["step"] == [r["step"] for r in read_metrics(run_dir) if "train/loss" in r][-1]


BULK = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB, so that a write takes a while


def _saver(directory: str, first: int, ack: int) -> None:
    """The child: saves checkpoints 'first', 'first + 1', ... forever, acknowledging each one once it returned.

    Only tiny tensors are made here: a forked child must not enter torch's thread pool.
    """
    store = LocalCheckpointStore(directory, keep_last=2)
    store.start()
    i = first
    while True:
        state = {"model": {"bulk": BULK, "w": torch.full((8,), float(i))}, "i": i}
        names = ["last", f"epoch-{i:04d}", *(["best"] if i % 3 == 0 else [])]
        store.save(state, names, meta={"epoch": i, "batch": 0, "step": i})
        os.write(ack, f"{i}\n".encode())
        i += 1


def test_kill_9_during_checkpoint_writes_the_newest_valid_one_always_loads(tmp_path):
    # A save's first DTensor check imports this (0.6 s): once here, not in every forked child.
    import torch.distributed.tensor  # noqa: F401
    rng = random.Random()
    directory = str(tmp_path / "ck")
    next_i = cut_short = rounds = 0
    # 25 kills at least, and more while fewer than 16 saves or no cut-short one happened: a loaded machine
    # saves less between kills, and this bounds the rounds, not the time.
    while rounds < 25 or (rounds < 400 and (next_i <= 15 or not cut_short)):
        rounds += 1
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                os.close(read)
                _saver(directory, next_i, write)
            finally:
                os._exit(1)
        os.close(write)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read) as handle:
            acknowledged = [int(line) for line in handle.read().split()]
        store = LocalCheckpointStore(directory, keep_last=2)
        cut_short += os.path.isdir(directory) and any(name.endswith(".tmp") for name in os.listdir(directory))
        store.start()
        assert not [name for name in os.listdir(directory) if name.endswith(".tmp")] if os.path.isdir(directory) else True
        name = store.latest()
        if acknowledged:
            assert name is not None, "a save returned, yet nothing loads"
        if name is None:
            continue
        loaded = store.load(name)
        newest = acknowledged[-1] if acknowledged else next_i - 1
        # Durable once save returned; at most the one being written when the kill came may be newer.
        assert newest <= loaded["i"] <= newest + 1
        assert torch.equal(loaded["model"]["w"], torch.full((8,), float(loaded["i"])))
        assert torch.equal(loaded["model"]["bulk"], BULK)
        next_i = loaded["i"] + 1
    assert next_i > 15  # the writes really happened between the kills
    assert cut_short >= 1  # and some kills really landed in the middle of one


def _small(i: int) -> dict:
    return {"model": {"w": torch.full((8,), float(i))}, "i": i}


def _save_small(store: LocalCheckpointStore, i: int, names: list[str]) -> None:
    store.save(_small(i), names, meta={"epoch": i, "batch": 0, "step": i})


def _points(directory, i: int, names: list[str]) -> list[str]:
    """The steps a save of ``names`` into (a copy of) ``directory`` goes through, in order."""
    scratch = directory.parent / f"{directory.name}-points"
    shutil.copytree(directory, scratch)
    reached: list[str] = []
    _save_small(LocalCheckpointStore(scratch, keep_last=2, hook=reached.append), i, names)
    shutil.rmtree(scratch)
    return reached


def _save_killed_at(directory, i: int, names: list[str], at: int) -> bool:
    """Saves ``i`` in a child killed at its step number ``at``; True if the save returned."""
    return save_in_killed_child(directory, lambda store: _save_small(store, i, names), lambda _, step: step == at)


def _check(directory, floor: int, ceiling: int, before: dict[str, int]) -> tuple[int, dict[str, int]]:
    """What a restart sees: the newest valid checkpoint is in [floor, ceiling], and nothing valid before was lost."""
    store = LocalCheckpointStore(directory, keep_last=2)
    store.start()
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    name = store.latest()
    assert name is not None
    newest = store.load(name)["i"]
    assert floor <= newest <= ceiling, (floor, newest, ceiling)
    manifest = read_manifest(directory)
    valid = {}
    for file in sorted({*manifest["files"], *manifest["pending"]}):
        try:
            entry = verify(directory / file)
        except CheckpointError:
            continue
        valid[file] = read_checkpoint(directory / file)["i"]
        assert valid[file] == entry["epoch"], file  # ordered by the entry its bytes match
    assert all(valid[file] <= newest for file in valid)
    for file, i in before.items():  # each name keeps its checkpoint or a newer one; only pruning removes one
        if file in valid:
            assert valid[file] >= i, file
        else:
            newer = [other for other in valid if other.startswith("epoch-") and other > file]
            assert file.startswith("epoch-") and len(newer) >= 2, (file, valid)
    return newest, valid


def test_kill_9_at_every_step_of_two_saves_in_a_row_never_loses_what_loaded_before(tmp_path):
    """Deterministic: every pair of kill points (save 2 cut short at a, then save 3 cut short at b)."""
    base = tmp_path / "base"
    store = LocalCheckpointStore(base, keep_last=2)
    for i in (0, 1):
        _save_small(store, i, ["last", f"epoch-{i:04d}"])
    _, committed = _check(base, 1, 1, {})
    first, second = ["last", "epoch-0002", "best"], ["last", "epoch-0003"]
    points = _points(base, 2, first)
    assert points[:3] == ["written", "manifest staged", "pending"] and "committed" in points
    for a in range(len(points) + 1):  # the last one: save 2 returns
        one = tmp_path / f"a{a}"
        shutil.copytree(base, one)
        acknowledged = _save_killed_at(one, 2, first, a)
        loaded, valid = _check(one, 2 if acknowledged else 1, 2, committed)
        for b in range(len(_points(one, 3, second)) + 1):
            two = tmp_path / f"a{a}b{b}"
            shutil.copytree(one, two)
            acknowledged = _save_killed_at(two, 3, second, b)
            _check(two, 3 if acknowledged else loaded, 3, valid)
            shutil.rmtree(two)


def test_a_resume_path_that_fails_is_one_line_and_exit_1(tmp_path):
    run_dir = tmp_path / "run"
    (tmp_path / "stray.pt").write_bytes(b"not a checkpoint")  # there, but no manifest vouches for it
    process = start(run_dir, f"trainer.resume={tmp_path / 'stray.pt'}")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == (f"trainwire: error: checkpoint {tmp_path / 'stray.pt'} has no "
                                            "manifest.json beside it; an unverified file is never used")
    assert "Traceback" not in err


def test_gan_kill_9_and_sigterm_then_resume_auto_is_exact(tmp_path, gan_reference):
    """The GAN loop keeps its run as the Trainer does: mid-epoch, around classification stage re-runs."""
    run_dir = tmp_path / "run"
    kill_at = random.Random().randrange(2, 16)  # the SIGTERM at kill_at + 5 leaves 2 epochs to land in
    process = start(run_dir, job=GAN_JOB)
    wait_for_step(process, run_dir, kill_at, after=0, key=GAN_LOSSES[0])
    wait_for_checkpoint(process, run_dir)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    seen = len(read_metrics(run_dir))
    process = start(run_dir, "trainer.resume=auto", job=GAN_JOB)
    wait_for_step(process, run_dir, kill_at + 5, after=seen, key=GAN_LOSSES[0])
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert "trainwire: interrupted by SIGTERM; checkpoint saved in" in err
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["plan"]["step"] == "gan" and 0 < saved["loop"]["step"] < GAN_STEPS
    finish(run_dir, "trainer.resume=auto", job=GAN_JOB)
    assert_matches(gan_reference, run_dir, GAN_LOSSES)


SCRIPT = os.path.join(os.path.dirname(__file__), "background_saves.py")


def test_kill_9_during_background_writes_leaves_the_newest_committed_checkpoint_loadable(tmp_path):
    """The writer's thread dies mid-save (at a random step of the store's protocol) while the loop trains on;
    what a restart loads is the newest committed checkpoint or the one being written, and it resumes to the end."""
    directory, acks = tmp_path / "ck", tmp_path / "acks"
    points = sorted(random.Random().sample(range(3, 60), 4))
    for point in points:
        done = subprocess.run([sys.executable, SCRIPT, "kill", str(directory), str(point), str(acks)],
                              capture_output=True, text=True, timeout=300)
        committed = [int(line) for line in acks.read_text().split()] if acks.exists() else []
        assert done.returncode in (0, 9), done.stderr
        store = LocalCheckpointStore(directory)
        store.start()
        name = store.latest()
        if committed:
            step = store.load(name)["loop"]["step"]
            assert committed[-1] <= step <= committed[-1] + 2, (committed, step)
        store.close()
    done = subprocess.run([sys.executable, SCRIPT, "kill", str(directory), str(1 << 29), str(acks)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_checkpoint(directory / "last.pt")["loop"]["step"] == 60


def test_enospc_during_a_background_save_is_a_checkpoint_error_and_the_last_checkpoint_is_untouched(tmp_path):
    """A real full disk: a 4 MiB tmpfs (in a user and mount namespace), filled after the first checkpoint."""
    folder = tmp_path / "fs"
    folder.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4m tmpfs {folder} && mkdir "
                           f"{folder}/ck && exec {sys.executable} {SCRIPT} full {folder}/ck"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"CheckpointError: could not write checkpoint {folder}/ck/last.pt: No space left on device "
                        f"({folder}/ck/last.pt)")
    assert lines[1:3] == ["last.pt unchanged: True", "manifest unchanged: True"]
    assert lines[3].startswith("loads: last ")


def test_sigterm_during_a_background_write_exits_143_with_that_save_committed(tmp_path):
    run_dir = tmp_path / "run"
    # About 13 MiB of state saved at every step: a background write is nearly always in flight.
    process = start(run_dir, "model.hidden=[1024,1024]", "checkpoint.every_n_steps=1")
    wait_for_step(process, run_dir, 3, after=0)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(name.startswith(".last.pt.") for name in os.listdir(checkpoints)):
        assert process.poll() is None and time.monotonic() < deadline, "no background write was seen"
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"trainwire: interrupted by SIGTERM; checkpoint saved in {checkpoints}"
    saved = read_checkpoint(checkpoints / "last.pt")
    assert saved["loop"]["step"] == [r["step"] for r in read_metrics(run_dir) if "train/loss" in r][-1]
    assert not [name for name in os.listdir(checkpoints) if name.endswith(".tmp")]
