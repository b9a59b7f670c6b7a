"""Throughput and MFU in the record: samples, steps and tokens per second, FLOPs counted once, the peak table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, make_trainer
from torch import nn

from trainwire import Cadence, Classification, TrainerSettings
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import compose
from trainwire.containers import run
from trainwire.policies.objectives import Objective
from trainwire.runtime.throughput import peak_of
from trainwire.testing import RecordingSink, read_metrics

THROUGHPUT = ("time/samples_per_s", "time/steps_per_s", "time/tflops", "time/train_s")


def test_mfu_on_a_model_whose_flops_are_counted_by_hand(task):
    """One bias-free Linear(8→3) whose input needs no gradient: 2·8·3 FLOPs a sample forward, as many for the
    weight's gradient, nothing else (cross-entropy is element-wise): 96 a sample, accumulation or not."""
    train, _ = task
    samples = sum(len(x) for x, _ in train)
    for accumulate in (1, 2):
        torch.manual_seed(0)
        model = nn.Linear(8, 3, bias=False)
        settings = TrainerSettings(max_epochs=2, device="cpu", accumulate_steps=accumulate, peak_tflops=1e-6)
        trainer = make_trainer(settings=settings)
        result = trainer.fit(model, train)
        assert trainer._meter.flops_per_sample == 96
        for epoch in result.history:
            tflops = 96 * samples / epoch["time/train_s"] / 1e12
            assert epoch["time/tflops"] == pytest.approx(tflops, rel=1e-9)
            assert epoch["time/mfu"] == pytest.approx(tflops / 1e-6, rel=1e-9)
            assert epoch["time/samples_per_s"] == pytest.approx(samples / epoch["time/train_s"], rel=1e-9)
            assert epoch["time/steps_per_s"] == pytest.approx(len(train) / accumulate / epoch["time/train_s"], rel=1e-9)
            assert "memory/max_allocated_gib" not in epoch  # CPU: no CUDA memory figures


class ModeSpy(Classification):
    """Records, per training batch, whether a FLOP counter was listening."""

    def __init__(self):
        super().__init__()
        self.counted = []

    def training_loss(self, model, batch):
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        # FlopCounterMode listens through a private dispatch mode of its own.
        self.counted.append(any(type(mode).__name__ == "_FlopCounterMode" for mode in _get_current_dispatch_mode_stack()))
        return super().training_loss(model, batch)


def test_flops_are_counted_on_the_first_step_only_and_not_again_after_a_resume(task, tmp_path):
    train, _ = task
    flops = 2 * (8 * 16 + 16 * 3) * 2 + 2 * 16 * 3  # forward; weight gradients; the hidden layer's input gradient
    settings = dict(max_epochs=2, device="cpu", accumulate_steps=2)
    spy = ModeSpy()
    result = make_trainer(objective=spy, settings=TrainerSettings(**settings), checkpoint_policy=Cadence(every_n_epochs=1),
                          checkpoints=LocalCheckpointStore(tmp_path / "a")).fit(make_model(), train)
    assert spy.counted == [True, True] + [False] * (2 * len(train) - 2)  # the first optimizer step's window
    assert "time/mfu" not in result.history[0] and result.history[0]["time/tflops"] > 0  # no peak known on a CPU
    saved = read_checkpoint(tmp_path / "a" / "epoch-0000.pt")
    assert saved["throughput"]["flops_per_sample"] == flops
    again = ModeSpy()
    resumed = make_trainer(objective=again, settings=TrainerSettings(**settings, resume=str(tmp_path / "a" / "epoch-0000.pt")),
                           checkpoints=LocalCheckpointStore(tmp_path / "b"))
    resumed.fit(make_model(), train)
    assert again.counted == [False] * len(train) and resumed._meter.flops_per_sample == flops


class TinyLM(nn.Module):
    """Embedding → Linear over the vocabulary; ``forward(**batch)`` returns the loss, as Hugging Face models do."""

    def __init__(self, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, input_ids, labels, attention_mask=None):
        logits = self.head(self.embed(input_ids))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class ModelLoss(Objective):
    def training_loss(self, model, batch):
        return model(**batch)

    def evaluate(self, model, batches, reduce=None):
        return {}


def lm_batches(n: int = 6, size: int = 4, length: int = 5) -> tuple[list[dict], int]:
    g = torch.Generator().manual_seed(0)
    data, tokens = [], 0
    for _ in range(n):
        ids = torch.randint(0, 11, (size, length), generator=g)
        lengths = torch.randint(2, length + 1, (size,), generator=g)
        mask = torch.arange(length) < lengths[:, None]
        labels = ids.masked_fill(~mask, -100)
        data.append({"input_ids": ids, "labels": labels, "attention_mask": mask.long()})
        tokens += int(mask.sum())
    return data, tokens


def test_tokens_per_second_counts_the_tokens_that_are_not_padding():
    data, tokens = lm_batches()
    sink = RecordingSink()
    trainer = make_trainer(objective=ModelLoss(), sink=sink, settings=TrainerSettings(max_epochs=2, device="cpu"))
    result = trainer.fit(TinyLM(), data)
    assert tokens < 6 * 4 * 5  # some padding, or the test proves nothing
    for epoch in result.history:
        assert epoch["time/tokens_per_s"] == pytest.approx(tokens / epoch["time/train_s"], rel=1e-9)
        assert epoch["time/samples_per_s"] == pytest.approx(24 / epoch["time/train_s"], rel=1e-9)
    assert [r.metrics["time/tokens_per_s"] for r in sink.records if "time/tokens_per_s" in r.metrics] == \
           [epoch["time/tokens_per_s"] for epoch in result.history]


def test_the_throughput_keys_are_in_metrics_jsonl_every_epoch(tmp_path):
    run(compose([f"run_dir={tmp_path}", "trainer.max_epochs=2", "lr.warmup_epochs=1", "data.batch_size=256"]))
    records = read_metrics(tmp_path)
    epochs = [record for record in records if "time/epoch_s" in record]
    assert len(epochs) == 2
    for record in epochs:
        assert set(THROUGHPUT) <= set(record) and all(record[key] > 0 for key in THROUGHPUT)
        assert record["time/train_s"] <= record["time/epoch_s"]


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA A10G", 70.0),
    ("NVIDIA GeForce GTX 1080", None),
])
def test_the_peak_table_matches_specific_names_first(name, peak):
    assert peak_of(name) == peak


def test_a_bad_peak_names_the_key():
    from trainwire import ConfigError

    with pytest.raises(ConfigError, match="trainer.peak_tflops=0"):
        TrainerSettings(peak_tflops=0)
