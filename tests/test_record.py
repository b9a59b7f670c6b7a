"""The run record holds one run, each step once: a resume cuts it back to its checkpoint; a fresh start over it is refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from trainwire import Classification, JsonlSink, Trainer, TrainerSettings
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import ConfigError
from trainwire.policies.cadence import Cadence
from trainwire.testing import read_metrics


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=generator)
    return [(x[i:i + 4], (x[i:i + 4, 0] > 0).long()) for i in range(0, 24, 4)]


def fit(run_dir, resume=None, epochs=2, hooks=(), stop=None):
    torch.manual_seed(0)
    trainer = Trainer(objective=Classification(), optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                      settings=TrainerSettings(max_epochs=epochs, resume=resume, log_every_n_steps=1),
                      checkpoint_policy=Cadence(every_n_epochs=1), sink=JsonlSink(run_dir),
                      checkpoints=LocalCheckpointStore(run_dir / "checkpoints"), hooks=hooks)
    return trainer.fit(nn.Linear(4, 2), data(), data(), stop=stop)


def test_a_resume_cuts_the_record_back_to_its_checkpoint(tmp_path):
    fit(tmp_path)
    at_checkpoint = (tmp_path / "metrics.jsonl").read_bytes()
    # What a run killed after that checkpoint logged before it died: gone once the run resumes.
    with open(tmp_path / "metrics.jsonl", "a") as record:
        record.write('{"step": 13, "epoch": 2, "train/loss": 0.5}\n')
    fit(tmp_path, resume="auto")
    assert (tmp_path / "metrics.jsonl").read_bytes() == at_checkpoint
    steps = [row["step"] for row in read_metrics(tmp_path) if "time/epoch_s" not in row]
    assert steps == list(range(1, 13))


@pytest.mark.parametrize("left", ["no checkpoints folder", "an empty checkpoints folder"])
def test_resume_auto_over_a_record_without_a_checkpoint_is_refused_and_changes_nothing(tmp_path, left):
    fit(tmp_path, epochs=1)
    for path in (tmp_path / "checkpoints").iterdir():
        path.unlink()
    if left == "no checkpoints folder":
        (tmp_path / "checkpoints").rmdir()
    record = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError) as refused:
        fit(tmp_path, resume="auto")
    assert str(refused.value) == (f"{tmp_path / 'metrics.jsonl'} holds the record of a run (7 rows) and there is no "
                                  "checkpoint to continue it from (trainer.resume=auto): a new run would be appended "
                                  "to it; train in another run folder, or move the record away to start over")
    assert (tmp_path / "metrics.jsonl").read_bytes() == record


class At:
    """At epoch 1, batch 2: raises ``error``, or stops the run's token."""

    def __init__(self, error=None, token=None):
        self.error, self.token = error, token

    def on_batch_end(self, state, loss):
        if (state.epoch, state.batch) == (1, 2):
            if self.error is not None:
                raise self.error
            self.token.stop()


@pytest.mark.parametrize("how", ["finished", "failed", "cancelled"])
def test_every_run_leaves_a_summary_with_its_verdict(tmp_path, how):
    from trainwire import StopToken
    from trainwire.errors import DataError, TrainingInterrupted

    token = StopToken()
    hooks = {"finished": [], "failed": [At(DataError("data (train split, batch 2): a label is out of range\nmore"))],
             "cancelled": [At(token=token)]}[how]
    if how == "finished":
        fit(tmp_path, hooks=hooks, stop=token)
    else:
        with pytest.raises(DataError if how == "failed" else TrainingInterrupted):
            fit(tmp_path, hooks=hooks, stop=token)
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = {"finished": {"status": "finished", "epochs_completed": 2},
                "failed": {"status": "failed", "epochs_completed": 1,
                           "error": "DataError: data (train split, batch 2): a label is out of range"},
                "cancelled": {"status": "cancelled", "epochs_completed": 1, "resumable": True}}[how]
    assert {key: summary.get(key) for key in expected} == expected
    assert ("error" in summary) == (how == "failed") and ("resumable" in summary) == (how == "cancelled")
