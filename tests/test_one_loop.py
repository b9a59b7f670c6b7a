"""One loop for every paradigm: the GAN is a step, so it gets what the supervised step gets;
the checkpoint is a union of named parts; a StopToken stops a run from any thread."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import blobs, make_trainer
from dependency_injector import providers

from trainwire import NonFiniteError, StopToken, TrainingInterrupted
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.errors import CheckpointError
from trainwire.testing import RecordingSink, read_metrics

SRC = Path(__file__).resolve().parents[1] / "src" / "trainwire"
# Small and quick: 384 training digits, 6 batches an epoch.
GAN = ["experiment=gan", "step.stage=false", "data.train_samples=384", "model.hidden=[32]"]
SUPERVISED = ["lr=constant", "data.train_samples=384", "model.hidden=[32]"]


def test_exactly_one_module_iterates_an_epoch_of_training_batches():
    """The epoch loop is where ``epoch_batches`` is called: only trainer.py may do it."""
    callers = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "epoch_batches":
                callers.add(path.name)
    assert callers == {"trainer.py"}


def test_a_gan_trains_with_a_users_own_target_optimizer(tmp_path):
    # (experiment=gan's own optimizer keys, lr and betas, still merge into the user's node: Adam takes them.)
    cfg = compose([*GAN, f"run_dir={tmp_path}", "trainer.max_epochs=2", "~optimizer",
                   "+optimizer={_target_: torch.optim.Adam, _partial_: true, lr: 0.01}", "step.critic_lr=0.05"])
    container = build_container(cfg)
    paradigm = container.paradigm()
    container.paradigm.override(providers.Object(paradigm))
    step = paradigm.trainer.step
    result = run(container)
    assert result.epochs_completed == 2 and result.steps == 2 * 3  # 6 batches, a generator step every 2nd
    assert isinstance(step.g_opt, torch.optim.Adam) and isinstance(step.c_opt, torch.optim.Adam)
    assert step.g_opt.param_groups[0]["lr"] == cfg.optimizer.lr and step.c_opt.param_groups[0]["lr"] == 0.05
    assert all(math.isfinite(h["val/mean_cov_distance"]) for h in result.history)


class DtypeProbe:
    """Records the dtype of the first Linear's output in every training forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.dtypes: set[torch.dtype] = set()
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype) if module.training else None)


def _poisoned(container, rows: int):
    """The container's data with ``rows`` training samples set to NaN (each in one batch of an epoch)."""
    loaders = container.data()
    loaders.train.dataset.tensors[0][:rows] = float("nan")
    container.data.override(providers.Object(loaders))
    return loaders


@pytest.mark.parametrize("job", [SUPERVISED, GAN], ids=["supervised", "gan"])
def test_every_paradigm_gets_precision_and_the_nonfinite_guard_from_the_one_loop(tmp_path, job):
    # bf16: the forward pass runs under autocast, whatever the step.
    container = build_container(compose([*job, f"run_dir={tmp_path / 'bf16'}", "trainer.max_epochs=1",
                                         "trainer.precision=bf16"]))
    model = container.model()
    probe = DtypeProbe(model.generator if hasattr(model, "generator") else model)
    container.model.override(providers.Object(model))
    run(container)
    assert probe.dtypes == {torch.bfloat16}

    # skip: one poisoned sample, so one skipped step an epoch; the weights stay finite.
    container = build_container(compose([*job, f"run_dir={tmp_path / 'skip'}", "trainer.max_epochs=2"]))
    _poisoned(container, rows=1)
    model = container.model()
    container.model.override(providers.Object(model))
    result = run(container)
    assert [h["train/skipped_steps"] for h in result.history] == [1, 2]
    assert all(p.isfinite().all() for p in model.parameters())

    # raise: the first non-finite step ends the run with the same error in every paradigm.
    container = build_container(compose([*job, f"run_dir={tmp_path / 'raise'}", "trainer.max_epochs=2",
                                         "nonfinite=raise"]))
    _poisoned(container, rows=1)
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradients after step \d+ \(nonfinite=raise\)"):
        run(container)


class StopAt:
    """Stops the run's token at the start of epoch ``epoch``, as a SIGTERM would."""

    def __init__(self, token: StopToken, epoch: int) -> None:
        self.token, self.epoch = token, epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            self.token.stop()


def test_a_metric_schedule_resumes_on_schedule(tmp_path):
    job = [*SUPERVISED, "trainer.max_epochs=7", "+metrics_every.accuracy=3", "stopping=none"]
    run(compose([*job, f"run_dir={tmp_path / 'whole'}"]))
    whole = [r["epoch"] for r in read_metrics(tmp_path / "whole") if "val/accuracy" in r]

    token = StopToken()
    container = build_container(compose([*job, f"run_dir={tmp_path / 'cut'}"]))
    container.hooks.override(providers.List(providers.Object(StopAt(token, 4))))
    with pytest.raises(TrainingInterrupted) as stopped:
        run(container, stop=token)
    assert stopped.value.saved and stopped.value.signum is None
    run(compose([*job, f"run_dir={tmp_path / 'cut'}", "trainer.resume=auto"]))
    cut = [r["epoch"] for r in read_metrics(tmp_path / "cut") if "val/accuracy" in r]
    assert whole == cut == [0, 3, 6]


def test_a_gan_stopped_and_resumed_matches_the_uninterrupted_run(tmp_path):
    """The GAN's parts (two optimizers, two lr policies, its counters and epoch losses) resume exactly."""
    job = [*GAN, "step.stage=true", "step.stage_epochs=1", "step.goal=0.999", "step.tolerance=0",
           "trainer.max_epochs=3", "checkpoint.every_n_steps=2"]
    whole = run(compose([*job, f"run_dir={tmp_path / 'whole'}"]))
    token = StopToken()
    container = build_container(compose([*job, f"run_dir={tmp_path / 'cut'}"]))
    container.hooks.override(providers.List(providers.Object(StopAt(token, 1))))
    with pytest.raises(TrainingInterrupted):
        run(container, stop=token)
    assert read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["gan"]["reruns"] == 1
    resumed = run(compose([*job, f"run_dir={tmp_path / 'cut'}", "trainer.resume=auto"]))
    drop = lambda history: [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]  # noqa: E731
    assert drop(resumed.history) == drop(whole.history)
    assert [h["stage/reruns"] for h in whole.history] == [1.0, 2.0, 3.0]
    final = {name: read_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"] for name in ("whole", "cut")}
    assert all(torch.equal(final["whole"][key], value) for key, value in final["cut"].items())


def _loaders():
    from torch.utils.data import DataLoader, TensorDataset

    from trainwire.data import ResumableSampler

    x, y = blobs(n=200)
    generator = torch.Generator()
    sampler = ResumableSampler(160, 16, seed=0, generator=generator)  # 10 batches an epoch
    return (DataLoader(TensorDataset(x[:160], y[:160]), batch_sampler=sampler, generator=generator),
            DataLoader(TensorDataset(x[160:], y[160:]), batch_size=40))


def _fit(directory: Path, *, stop=None, hooks=(), resume=None):
    from trainwire import TrainerSettings

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    trainer = make_trainer(settings=TrainerSettings(max_epochs=3, device="cpu", log_every_n_steps=1, resume=resume),
                           checkpoints=LocalCheckpointStore(directory), hooks=hooks, sink=RecordingSink())
    result = trainer.fit(model, *_loaders(), stop=stop)
    return model, result


def test_a_stop_token_from_another_thread_stops_within_one_step_and_resumes_exactly(tmp_path):
    whole_model, whole = _fit(tmp_path / "whole")
    token, reached = StopToken(), threading.Event()

    class Pause:  # at step 13, hands over to the controlling thread and waits for its stop
        def on_batch_end(self, state, loss):
            if state.step == 13:
                reached.set()
                token.wait(timeout=300)

    outcome = {}

    def train():
        try:
            _fit(tmp_path / "cut", stop=token, hooks=[Pause()])
        except TrainingInterrupted as error:
            outcome["error"] = error

    worker = threading.Thread(target=train)
    worker.start()
    assert reached.wait(timeout=300)
    token.stop()  # from this thread, while the run is inside step 14's batch
    worker.join(timeout=300)
    assert not worker.is_alive() and outcome["error"].saved and outcome["error"].signum is None
    saved = read_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["loop"]["step"] == 14 and saved["loop"]["position"] == {"epoch": 1, "batch": 4}
    model, resumed = _fit(tmp_path / "cut", resume="auto")
    drop = lambda history: [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]  # noqa: E731
    assert drop(resumed.history) == drop(whole.history)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), whole_model.state_dict().values()))


def test_a_token_stopped_before_the_run_stops_it_before_the_first_step(tmp_path):
    token = StopToken()
    token.stop()
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, stop=token)
    assert read_checkpoint(tmp_path / "last.pt")["loop"]["step"] == 0


def test_a_checkpoint_of_the_first_format_is_refused_by_name(tmp_path):
    _fit(tmp_path / "a")
    old = read_checkpoint(tmp_path / "a" / "last.pt")
    old["format"] = 1
    LocalCheckpointStore(tmp_path / "b").save(old, ["last"], meta={"epoch": 3, "batch": 0, "step": 30})
    with pytest.raises(CheckpointError, match=r"checkpoint last has format 1; this trainwire reads format 2"):
        _fit(tmp_path / "b", resume="auto")


class Counter:
    """A hook with state: checkpointed because it has state_dict/load_state_dict, nothing else to do."""

    def __init__(self) -> None:
        self.batches = 0

    def on_batch_end(self, state, loss):
        self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def test_a_hook_with_state_is_a_part_of_the_checkpoint(tmp_path):
    token = StopToken()
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, stop=token, hooks=[Counter(), StopAt(token, 1)])
    assert read_checkpoint(tmp_path / "last.pt")["hook0.Counter"] == {"batches": 11}
    counter = Counter()
    _fit(tmp_path, resume="auto", hooks=[counter])
    assert counter.batches == 30  # 3 epochs of 10 batches, counted across the resume


@pytest.mark.slow
def test_a_gan_under_torchrun_ddp_is_refused_with_one_line(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "trainwire", "train", "experiment=gan",
               "strategy=ddp", "step.stage=false", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("trainwire: error: step=gan trains in one process; strategy=ddp is not "
                             "supported (use strategy=single)") == 1
    assert "exitcode  : 2" in done.stderr and "exitcode  : 1 " not in done.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
