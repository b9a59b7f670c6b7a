"""Bad data, a stuck worker, a run that took no step and Ctrl-C while starting: one line and an exit code (issue 21).

Most cases are in-process: a tiny Trainer fits bad data and the DataError's line and exit code are
asserted. The CLI cases (the line on stderr, the exit code, no traceback) and Ctrl-C while
``trainwire`` starts are real subprocesses, marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TRAINWIRE, clean_env, make_model, make_trainer, trainwire
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainwire import ConfigError, DataError, NonFiniteError, Regression, TrainerSettings
from trainwire.data import as_loaders, check_timeout
from trainwire.testing import RecordingSink


class Samples(Dataset):
    """16 samples of 8 features and a label of 3 classes; ``broken`` changes what one call returns or does."""

    def __init__(self, broken=None) -> None:
        self.broken = broken

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int):
        if self.broken is not None:
            return self.broken(index)
        return torch.ones(8), index % 3


def _raises(index):
    if index == 5:
        raise ValueError("sample 5 is corrupt")
    return torch.ones(8), 0


def _blocks(index):
    time.sleep(3600)


def _dies(index):
    os.kill(os.getpid(), signal.SIGKILL)


def _labels(*changed):
    y = torch.arange(16) % 3
    for index, value in changed:
        y[index] = value
    return DataLoader(TensorDataset(torch.ones(16, 8), y), batch_size=8)


def _fit(train, objective=None):
    trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"),
                           **({"objective": objective} if objective is not None else {}))
    with pytest.raises(DataError) as raised:
        trainer.fit(make_model(), train)
    return raised.value


CHECKED = {  # refused by the first batch's check, before it trains: exit 2
    "label too large": (lambda: _labels((3, 7)), None,
                        "data (train split, batch 0): label 7 (sample 3 of the batch) is out of range for the "
                        "model's 3 outputs"),
    "negative label": (lambda: _labels((2, -1)), None, "label -1 (sample 2 of the batch) is out of range"),
    "targets of the output's shape, as integers": (
        lambda: DataLoader(TensorDataset(torch.ones(16, 8), torch.zeros(16, 3, dtype=torch.long)), batch_size=8), None,
        "the targets are a tensor of shape [8, 3] (int64) and the model's output is a tensor of shape [8, 3] "
        "(float32); objective=classification takes class indices of shape [8]"),
    "string samples": (lambda: DataLoader(Samples(lambda i: ("a sample", 0)), batch_size=8), None,
                       "the inputs are a tuple of 8 str, which the model cannot take"),
    "regression targets of another shape": (lambda: _labels(), Regression(),
                                            "the targets are a tensor of shape [8] (int64) and the model's output is "
                                            "a tensor of shape [8, 3] (float32); objective=regression takes"),
}
READING = {  # raised while the loader produced a batch: exit 1, the user's own message
    "the dataset raises": (lambda: DataLoader(Samples(_raises), batch_size=4),
                           "data (train split, batch 1): the dataset raised ValueError: sample 5 is corrupt"),
    "the dataset raises in a worker": (lambda: DataLoader(Samples(_raises), batch_size=8, num_workers=1),
                                       "data (train split, batch 0): the dataset raised ValueError: sample 5 is corrupt"),
    "samples of varying size": (lambda: DataLoader(Samples(lambda i: (torch.ones(8 + i % 2), 0)), batch_size=4),
                                "data (train split, batch 0): collating the samples into a batch (torch's "
                                "default_collate) raised RuntimeError: stack expects each tensor to be equal size"),
    "a collate function raises": (lambda: DataLoader(Samples(), batch_size=4, collate_fn=_collate),
                                  "data (train split, batch 0): the collate function (_collate) raised KeyError: 'mask'"),
    "a stuck worker": (lambda: as_loaders((Samples(_blocks), None), {"batch_size": 4, "num_workers": 1,
                                                                      "timeout_s": 0.5}).train,
                       "data (train split, batch 0): no batch came from the DataLoader's workers in 0.5 s (data.timeout_s)"),
    "a worker killed": (lambda: DataLoader(Samples(_dies), batch_size=4, num_workers=1),
                        "data (train split, batch 0): a DataLoader worker died"),
}


def _collate(samples):
    raise KeyError("mask")


@pytest.mark.parametrize("case", CHECKED)
def test_data_that_does_not_fit_the_model_is_one_line_before_training(case):
    make, objective, expected = CHECKED[case]
    error = _fit(make(), objective)
    assert expected in str(error) and "\n" not in str(error)
    assert error.exit_code == 2


@pytest.mark.parametrize("case", READING)
def test_a_failure_while_reading_names_the_split_the_batch_and_the_users_message(case):
    make, expected = READING[case]
    error = _fit(make())
    assert str(error).startswith(expected) and "\n" not in str(error)
    assert error.exit_code == 1


def test_validation_data_are_named_as_the_val_split():
    trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"))
    with pytest.raises(DataError, match=r"^data \(val split, batch 1\): the dataset raised ValueError: sample 5 is corrupt$"):
        trainer.fit(make_model(), _labels(), DataLoader(Samples(_raises), batch_size=4))


def test_ignored_labels_and_class_probabilities_pass_the_check():
    y = torch.arange(16) % 3
    y[0] = -100  # cross_entropy's ignore_index
    trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"))
    assert trainer.fit(make_model(), DataLoader(TensorDataset(torch.ones(16, 8), y), batch_size=8)).steps == 2
    probabilities = torch.full((16, 3), 1 / 3)
    trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"))
    assert trainer.fit(make_model(), DataLoader(TensorDataset(torch.ones(16, 8), probabilities), batch_size=8)).steps == 2


def test_the_check_changes_no_running_statistics():
    """The check runs in eval mode: a BatchNorm's statistics are those of the training steps alone."""
    def fitted(check: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"))
        if not check:
            trainer.objective.check_batch = lambda model, batch: None
        x = torch.randn(16, 8)
        trainer.fit(model, DataLoader(TensorDataset(x, torch.arange(16) % 3), batch_size=8))
        return model[1].running_mean

    assert torch.equal(fitted(True), fitted(False))


def test_a_run_that_took_no_step_fails_and_its_summary_says_why():
    sink = RecordingSink()
    trainer = make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu"), sink=sink)
    nan = DataLoader(TensorDataset(torch.full((16, 8), float("nan")), torch.arange(16) % 3), batch_size=8)
    with pytest.raises(NonFiniteError, match="^no optimizer step was taken: every step \\(2\\) had a non-finite loss"):
        trainer.fit(make_model(), nan)
    assert sink.summary_values["steps"] == 0 and sink.summary_values["stop_reason"] == "no_step_taken"
    assert sink.summary_values["notes"][0].startswith("no optimizer step was taken")
    assert sink.status == "failed"


def test_a_run_whose_data_gave_no_batch_fails():
    class Empty(list):
        def __len__(self):
            return 2  # says 2 batches, gives none

    with pytest.raises(DataError, match=r"^data \(train split, epoch 0\): the training data gave no batch \(its length says 2\)"):
        make_trainer(settings=TrainerSettings(max_epochs=1, device="cpu")).fit(make_model(), Empty())


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "60"])
def test_data_timeout_s_is_a_positive_number_of_seconds(value):
    with pytest.raises(ConfigError, match=r"^data.timeout_s=.* must be a number of seconds > 0"):
        check_timeout(value)


def test_trainwires_loaders_time_out_only_with_workers():
    assert as_loaders((Samples(), None), {"num_workers": 0}).train.timeout == 0  # torch forbids it without workers
    assert as_loaders((Samples(), None), {"num_workers": 2}).train.timeout == 300.0
    assert as_loaders((Samples(), None), {"num_workers": 2, "timeout_s": 5}).train.timeout == 5.0


QUICK = ["trainer.max_epochs=1", "model.hidden=[8]", "progress=never", "log.level=error", "stopping=none"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["labels", "nan"])
def test_the_cli_says_one_line_for_bad_data_and_a_run_without_steps(tmp_path, case):
    (tmp_path / "baddata.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def labels():\n    return TensorDataset(torch.rand(64, 64), torch.arange(64) % 12), None\n"
        "def nan():\n    return TensorDataset(torch.full((64, 64), float('nan')), torch.arange(64) % 10), None\n")
    done = trainwire("train", f"data._target_=baddata.{case}", "model.in_features=64", "model.out_features=10",
                     f"hydra.run.dir={tmp_path / 'run'}", *QUICK, cwd=tmp_path, timeout=300)
    lines = done.stderr.strip().splitlines()
    expected = {"labels": (2, "trainwire: error: data (train split, batch 0): label 1"),
                "nan": (1, "trainwire: error: no optimizer step was taken: every step (1) had a non-finite")}[case]
    assert (done.returncode, len(lines)) == (expected[0], 1), done.stderr
    assert lines[0].startswith(expected[1]) and "out of range for the model's 10 outputs" in lines[0] \
        if case == "labels" else lines[0].startswith(expected[1]), lines


def _caught(pid: int, signum: int) -> bool:
    """Whether the process has a handler of its own for ``signum`` (/proc's SigCgt mask)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
    return bool(caught >> (signum - 1) & 1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8])
def test_ctrl_c_while_starting_exits_130_with_one_line(tmp_path, delay):
    """``delay`` s after the interpreter is up (its own SIGINT handler is in place): inside ``import torch``,
    composing or building. The CLI's handler is in place within milliseconds of that (nothing heavy is
    imported before it); a process already training stops at its next step, also 130 and one line."""
    process = subprocess.Popen([TRAINWIRE, "train", f"hydra.run.dir={tmp_path / 'run'}", *QUICK], cwd=tmp_path,
                               env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _caught(process.pid, signal.SIGINT):
        assert process.poll() is None and time.monotonic() < deadline, "the interpreter never started"
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert process.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith("trainwire: interrupted by SIGINT") and "Traceback" not in stderr
