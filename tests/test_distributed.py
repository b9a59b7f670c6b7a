"""Distributed training for real: 2 processes started by ``torchrun`` on the CPU (gloo).

The ``slow`` ones launch two Python processes each; they run in CI with the rest of the suite.
The sampler and strategy tests at the end run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TORCHRUN, clean_env

from trainwire import registry
from trainwire.checkpointing.format import read_checkpoint
from trainwire.testing import read_metrics

# digits: 1,437 training samples; 32 per process and 2 processes is 64 a step, 23 steps an epoch.
JOB = ["trainer.max_epochs=2", "lr.warmup_epochs=1", "model.hidden=[32]", "trainer.log_every_n_steps=1",
       "checkpoint.every_n_epochs=1", "checkpoint.every_n_steps=3", "log.format=json"]
STEPS = 46


def torchrun(cwd: Path, *args: str, processes: int = 2) -> subprocess.Popen:
    command = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}", *args]
    return subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(cwd: Path, *overrides: str, processes: int = 2) -> subprocess.Popen:
    """The job at 64 samples a step: 32 a process on 2, 64 on 1."""
    return torchrun(cwd, "-m", "trainwire", "train", f"data.batch_size={64 // processes}", *JOB, *overrides,
                    processes=processes)


def whole(part):
    """A checkpoint part as plain tensors: FSDP's shards read whole."""
    from trainwire.checkpointing.sharding import ShardedState

    return part.consolidate() if isinstance(part, ShardedState) else part


def finish(process: subprocess.Popen) -> str:
    """Waits for a launch that must succeed; its stderr, where the CLI logs (ADR 0035)."""
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def workers(process: subprocess.Popen) -> dict[int, int]:
    """Rank -> pid of the worker processes torchrun started."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = {}
        for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [entry[5:] for entry in environ if entry.startswith(b"RANK=")]
            if ranks:
                found[int(ranks[0])] = int(pid)
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError("torchrun did not start 2 workers")


def kill_rank_at_step(process: subprocess.Popen, run_dir: Path, rank: int, step: int) -> None:
    pids = workers(process)
    deadline = time.monotonic() + 300
    while not any(r.get("step", 0) >= step and "train/loss" in r for r in read_metrics(run_dir)):
        assert process.poll() is None, f"the run ended before step {step}: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"step {step} never came"
        time.sleep(0.01)
    os.kill(pids[rank], signal.SIGKILL)
    process.communicate(timeout=300)
    assert process.returncode != 0  # torchrun saw the dead worker and stopped the other one
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def assert_same_training(expected_dir: Path, run_dir: Path, *, exact: bool) -> None:
    expected, final = (read_checkpoint(d / "checkpoints" / "last.pt") for d in (expected_dir, run_dir))
    weights = whole(final["model"])
    for key, value in whole(expected["model"]).items():
        if exact:
            assert torch.equal(weights[key], value), key
        else:
            torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6)
    assert final["loop"]["step"] == expected["loop"]["step"] == STEPS
    losses = {r["step"]: r["train/loss"] for r in read_metrics(expected_dir) if "train/loss" in r}
    seen = {}
    for record in read_metrics(run_dir):  # steps replayed after the kill appear twice: each must match
        if "train/loss" in record:
            assert record["train/loss"] == pytest.approx(losses[record["step"]], abs=0 if exact else 1e-6)
            seen[record["step"]] = record["train/loss"]
    assert sorted(seen) == sorted(losses) == list(range(1, STEPS + 1))
    assert [h["val/loss"] for h in final["loop"]["history"]] == pytest.approx([h["val/loss"] for h in expected["loop"]["history"]],
                                                                       abs=0 if exact else 1e-6)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """An uninterrupted DDP run at 32 a process, with no hydra.run.dir: rank 0 names the one directory.

    No strategy is given: the default, auto, is DDP under torchrun.
    """
    cwd = tmp_path_factory.mktemp("ddp")
    logged = finish(train(cwd))
    run_dirs = [path.parent for path in (cwd / "outputs").glob("*/*/metrics.jsonl")]
    assert len(run_dirs) == 1 and len(list((cwd / "outputs").glob("*/*"))) == 1  # one run directory, not one a rank
    assert (run_dirs[0] / ".hydra" / "config.yaml").exists()
    logs = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert {line["rank"] for line in logs if line["event"] == "epoch"} == {0}  # other ranks log only problems
    return run_dirs[0]


@pytest.mark.slow
def test_ddp_at_batch_b_matches_one_process_at_batch_2b(ddp_run, tmp_path):
    from trainwire.config import compose
    from trainwire.containers import run

    single = run(compose([f"run_dir={tmp_path}", "data.batch_size=64", *JOB]))
    assert single.steps == STEPS
    ddp, one = (read_checkpoint(d / "checkpoints" / "last.pt") for d in (ddp_run, tmp_path))
    for key, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-6)
        assert not torch.equal(value, read_checkpoint(tmp_path / "checkpoints" / "epoch-0000.pt")["model"][key])
    # Validation is reduced over the whole set (sum, then divide), not a mean of per-rank means.
    assert [h["val/loss"] for h in ddp["loop"]["history"]] == pytest.approx([h["val/loss"] for h in one["loop"]["history"]], abs=1e-6)
    assert [h["val/accuracy"] for h in ddp["loop"]["history"]] == [h["val/accuracy"] for h in one["loop"]["history"]]
    config = (ddp_run / "config.yaml").read_text()
    assert "strategy:\n  type: ddp" in config and f"run_dir: {ddp_run}" in config


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_auto_continues_exactly(ddp_run, tmp_path):
    run_dir = tmp_path / "run"
    process = train(tmp_path, "strategy=ddp", f"hydra.run.dir={run_dir}")
    kill_rank_at_step(process, run_dir, rank=1, step=28)
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 27 <= saved["loop"]["step"] < STEPS  # a mid-run checkpoint is what resume starts from
    finish(train(tmp_path, "strategy=ddp", f"hydra.run.dir={run_dir}", "trainer.resume=auto"))
    assert_same_training(ddp_run, run_dir, exact=True)


def shard_files(run_dir: Path, name: str = "last.pt") -> list[str]:
    from trainwire.checkpointing.format import read_manifest

    return sorted(file.split("/")[1] for file in read_manifest(run_dir / "checkpoints")["files"][name]["shards"])


@pytest.mark.slow
def test_fsdp_writes_shards_on_2_processes_and_resumes_on_1(ddp_run, tmp_path):
    run_dir = tmp_path / "run"
    process = train(tmp_path, "strategy=fsdp", f"hydra.run.dir={run_dir}")
    kill_rank_at_step(process, run_dir, rank=0, step=16)
    assert shard_files(run_dir) == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank its own shards
    small = (run_dir / "checkpoints" / "last.pt").stat().st_size
    finish(train(tmp_path, "strategy=fsdp", f"hydra.run.dir={run_dir}", "trainer.resume=auto", processes=1))
    assert shard_files(run_dir) == [".metadata", "__0_0.distcp"]
    assert_same_training(ddp_run, run_dir, exact=False)  # sharded, the same arithmetic as DDP
    assert small < 64 * 1024  # the model and optimizer are in the shards, not in the .pt file
    # Exported whole for inference, with no process group: a plain model loads it.
    from trainwire.checkpointing.export import weights_checkpoint
    from trainwire.models import MLP

    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "trainwire"), "export-weights", str(run_dir),
                          "-o", str(tmp_path / "model.pt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    model = MLP(in_features=64, out_features=10, hidden=[32])
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    final = whole(read_checkpoint(weights_checkpoint(run_dir))["model"])  # best.pt: what a run folder ships
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())


@pytest.mark.slow
def test_fsdp_on_1_process_stopped_by_sigterm_resumes_on_2(ddp_run, tmp_path):
    run_dir = tmp_path / "run"
    process = train(tmp_path, "strategy=fsdp", f"hydra.run.dir={run_dir}", processes=1)
    deadline = time.monotonic() + 300
    while not any(r.get("step", 0) >= 20 and "train/loss" in r for r in read_metrics(run_dir)):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or never reached step 20"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # torchrun hands it on: the worker saves its shards, then exits 143
    process.communicate(timeout=300)
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 20 <= saved["loop"]["step"] < STEPS and saved["processes"] == 1
    assert shard_files(run_dir) == [".metadata", "__0_0.distcp"]
    finish(train(tmp_path, "strategy=fsdp", f"hydra.run.dir={run_dir}", "trainer.resume=auto"))
    assert shard_files(run_dir) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert_same_training(ddp_run, run_dir, exact=False)


@pytest.mark.slow
def test_early_stopping_is_rank_0s_decision_on_every_rank(tmp_path):
    job = Path(__file__).with_name("distributed_job.py")
    process = torchrun(tmp_path, str(job), str(tmp_path), "strategy=ddp", "data.batch_size=32",
                       "trainer.max_epochs=6", "lr.warmup_epochs=1", "model.hidden=[32]", f"run_dir={tmp_path / 'r'}")
    finish(process)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for record in ranks:  # rank 1's own stopper never stops; rank 0's verdict holds for both
        assert (record["epochs_completed"], record["stop_reason"], record["steps"]) == (2, "scripted", 46)
        assert record["epoch_ends"] == [0, 1]
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]  # the same reduced metrics on every rank
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["stop_reason"] == "scripted"


@pytest.mark.slow
def test_an_explicit_single_strategy_under_torchrun_is_refused_on_every_rank(tmp_path):
    process = train(tmp_path, "strategy=single", f"hydra.run.dir={tmp_path / 'r'}")
    out, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert err.count("strategy=single would train one model in each") == 1, err[-2000:]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_auto_is_ddp_only_inside_a_process_group():
    from trainwire.runtime.distributed import (
        DDP,
        SingleProcess,
        resolve_strategy,
    )

    def make_strategy(name):  # what strategy=<name> builds
        return registry.build("strategy", {"type": name})

    assert resolve_strategy("auto") == "single" and isinstance(make_strategy("auto"), SingleProcess)
    assert resolve_strategy("fsdp") == "fsdp"
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert resolve_strategy("auto") == "ddp" and isinstance(make_strategy("auto"), DDP)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_bad_value_is_judged_once_by_rank_0_and_every_rank_exits_2(tmp_path):
    process = train(tmp_path, "strategy=ddp", "optimizer.lr=0", f"hydra.run.dir={tmp_path / 'r'}")
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert err.count("trainwire: error: optimizer.lr=0.0 must be > 0") == 1  # rank 0 speaks; rank 1 exits quietly
    assert "exitcode  : 2" in err and "exitcode  : 1 " not in err  # a clean exit 2, no crash in any rank
    assert "trainwire/" not in err.partition("torch.distributed.elastic")[0]  # no traceback of ours
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# The sharding itself, in one process (fast) --------------------------------------------------
@pytest.mark.parametrize(("size", "batch"), [(160, 16), (157, 16), (33, 16), (5, 2)])
def test_n_ranks_at_batch_b_see_together_what_one_process_sees_at_batch_nb(size, batch):
    from trainwire.data import ResumableSampler

    def epoch(sampler, number, start=0):
        sampler.set_epoch(number, start)
        return list(sampler)

    for world in (2, 3):
        whole = ResumableSampler(size, batch * world, seed=5)
        ranks = [ResumableSampler(size, batch, seed=5, rank=r, world_size=world) for r in range(world)]
        assert {len(s) for s in ranks} == {len(whole)}
        for number, start in [(0, 0), (3, 0), (3, 2)]:
            joined = [sum(parts, []) for parts in zip(*(epoch(s, number, start) for s in ranks))]
            expected = epoch(whole, number, start)
            assert all(all(parts) for parts in zip(*(epoch(s, number, start) for s in ranks)))  # no empty batch
            if not expected or len(expected[-1]) >= world:
                assert joined == expected
            else:  # fewer samples than processes at the end: padded from the epoch's start
                assert joined[:-1] == expected[:-1] and joined[-1][: len(expected[-1])] == expected[-1]


@pytest.mark.parametrize(("size", "batch", "world"), [(359, 256, 2), (360, 4, 2), (9, 4, 2), (10, 2, 3), (7, 3, 2)])
def test_validation_shards_cover_the_set_once_in_equal_batch_counts(size, batch, world):
    from trainwire.data import ShardBatches

    shards = [list(ShardBatches(size, batch, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(ShardBatches(size, batch)) or world > 1
                                                      for s in shards)
    seen = sorted(i for shard in shards for b in shard for i in b)
    assert seen == list(range(size))
    assert all(0 < len(b) <= batch for shard in shards for b in shard)


def test_one_process_strategy_is_the_identity_and_starts_no_group():
    import torch.distributed as dist

    from trainwire.errors import ConfigError
    from trainwire.runtime.distributed import SingleProcess

    def make_strategy(name):  # what strategy=<name> builds
        return registry.build("strategy", {"type": name})

    strategy = make_strategy("single")
    model = torch.nn.Linear(2, 2)
    assert isinstance(strategy, SingleProcess) and strategy.setup(model) is model and strategy.is_rank0
    totals = torch.tensor([1.0, 2.0])
    assert strategy.reduce(totals) is totals and strategy.broadcast("x") == "x" and strategy.any(True)
    assert not dist.is_initialized()
    with pytest.raises(ConfigError, match=r"strategy.type='dp' is not an option; choose one of: auto, ddp, fsdp, single"):
        make_strategy("dp")
    with pytest.raises(ConfigError, match=r"needs the processes started by torchrun"):
        make_strategy("ddp").start()  # no launcher around this test: a clear error, no hang


@pytest.mark.slow
def test_ddp_compiled_trains_as_ddp_does_and_checkpoints_the_plain_module(ddp_run, tmp_path):
    """torch.compile over the DDP-wrapped model (one compile per rank): the same training, kernels aside."""
    run_dir = tmp_path / "run"
    finish(train(tmp_path, "strategy=ddp", "trainer.compile=true", f"hydra.run.dir={run_dir}"))
    compiled, eager = (read_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, ddp_run))
    assert set(compiled["model"]) == set(eager["model"])  # no _orig_mod. or module. prefixes
    assert compiled["loop"]["step"] == STEPS
    for key, value in eager["model"].items():
        torch.testing.assert_close(compiled["model"][key], value, rtol=1e-4, atol=1e-4)
    epochs = [record for record in read_metrics(run_dir) if "time/epoch_s" in record]
    assert all("compile/recompiles" in record and record["time/samples_per_s"] > 0 for record in epochs)
