"""LR policies against torch's own schedulers, from tables of steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    SequentialLR,
)

from trainwire import ConfigError, Constant, CosineWarmRestarts, WarmupCosine
from trainwire.policies.lr import preview

LR, MIN_LR, START = 0.1, 1e-4, 1e-3


def torch_reference(warmup: int, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = SequentialLR(
        opt,
        [LinearLR(opt, start_factor=START, total_iters=warmup), CosineAnnealingLR(opt, T_max=total - warmup, eta_min=MIN_LR)],
        milestones=[warmup],
    )
    values = []
    for _ in range(total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def formula(k: int, warmup: int, total: int) -> float:
    if k < warmup:
        return LR * (START + (1 - START) * k / warmup)
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2


def test_warmup_cosine_in_steps_matches_torch_and_the_formula():
    steps_per_epoch, epochs, warmup = 10, 10, 25
    total = steps_per_epoch * epochs
    got = preview(WarmupCosine(warmup_steps=warmup, start_factor=START, min_lr=MIN_LR),
                  lr=LR, steps_per_epoch=steps_per_epoch, max_epochs=epochs)
    reference = torch_reference(warmup, total)
    assert len(got) == total
    for k in (0, 1, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1):
        assert got[k] == pytest.approx(reference[k], rel=1e-12), k
        assert got[k] == pytest.approx(formula(k, warmup, total), rel=1e-9), k
    assert got[0] == pytest.approx(START * LR)
    assert got[warmup] == pytest.approx(LR)  # the switch happens exactly at the end of warmup
    assert max(got) == pytest.approx(LR) and got.index(max(got)) == warmup
    assert all(a < b for a, b in zip(got[:warmup], got[1 : warmup + 1]))  # rising through warmup
    assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1 :]))  # falling after
    assert got[-1] == pytest.approx(formula(total - 1, warmup, total)) and got[-1] < LR * 0.01


def test_warmup_given_in_epochs_is_counted_in_optimizer_steps():
    got = preview(WarmupCosine(warmup_epochs=2, start_factor=START, min_lr=MIN_LR), lr=LR, steps_per_epoch=7, max_epochs=6)
    assert got == pytest.approx(torch_reference(14, 42), rel=1e-12)
    assert got[14] == pytest.approx(LR) and got[13] < LR


def test_epoch_interval_moves_once_per_epoch():
    got = preview(WarmupCosine(warmup_epochs=2, start_factor=START, min_lr=MIN_LR, interval="epoch"),
                  lr=LR, steps_per_epoch=5, max_epochs=8)
    per_epoch = [got[i * 5] for i in range(8)]
    assert all(got[i * 5 : (i + 1) * 5] == [per_epoch[i]] * 5 for i in range(8))
    assert per_epoch == pytest.approx([formula(k, 2, 8) for k in range(8)], rel=1e-9)


def test_constant_and_restarts():
    assert set(preview(Constant(), lr=LR, steps_per_epoch=3, max_epochs=4)) == {LR}
    got = preview(CosineWarmRestarts(T0=3, T_mult=2, min_lr=0.0, interval="epoch"), lr=LR, steps_per_epoch=1, max_epochs=10)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(expected)
    restarts = [k for k in range(1, 10) if got[k] > got[k - 1]]
    assert restarts == [3, 9]  # periods 3, then 6


@pytest.mark.parametrize(
    ("kwargs", "steps", "epochs", "message"),
    [
        ({"warmup_epochs": 5}, 10, 5, "lr.warmup_epochs=5 must be shorter than the run"),
        ({"warmup_steps": 50}, 10, 5, "lr.warmup_steps=50 must be shorter than the run"),
    ],
)
def test_warmup_as_long_as_the_run_is_refused(kwargs, steps, epochs, message):
    with pytest.raises(ConfigError, match=message):
        preview(WarmupCosine(**kwargs), lr=LR, steps_per_epoch=steps, max_epochs=epochs)


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match="lr.warmup_epochs=2 and lr.warmup_steps=10 are both set"):
        WarmupCosine(warmup_epochs=2, warmup_steps=10)
    with pytest.raises(ConfigError, match="lr.warmup_steps=10 needs lr.interval=step"):
        WarmupCosine(warmup_steps=10, interval="epoch")
    with pytest.raises(ConfigError, match="lr.interval='hourly'"):
        WarmupCosine(interval="hourly")


@pytest.mark.parametrize("make", [lambda: WarmupCosine(warmup_ratio=0.2, min_lr=1e-4),
                                  lambda: WarmupCosine(warmup_epochs=1, interval="epoch"),
                                  lambda: CosineWarmRestarts(T0=2, interval="step")])
def test_a_policy_restored_into_a_longer_run_goes_on_as_the_longer_plan(make):
    """ADR 0031: restored after ``attach`` was told a longer run, a policy re-plans for it; the lr of each later
    step is the longer plan's (``preview``), whatever the saved run's schedule had reached."""
    per_epoch, done = 4, 9  # saved after 9 steps (2 epochs and 1 step) of a 3-epoch plan
    short = make()
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    short.attach(optimizer, steps_per_epoch=per_epoch, max_epochs=3)
    for step in range(done):
        optimizer.step()
        short.after_step()
        if (step + 1) % per_epoch == 0:
            short.after_epoch({})
    saved_optimizer, saved = optimizer.state_dict(), short.state_dict()

    longer = make()
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    longer.attach(optimizer, steps_per_epoch=per_epoch, max_epochs=6)
    optimizer.load_state_dict(saved_optimizer)  # the order a resume restores them in
    longer.load_state_dict(saved)
    lrs = []
    for step in range(done, 6 * per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        longer.after_step()
        if (step + 1) % per_epoch == 0:
            longer.after_epoch({})
    assert lrs == preview(make(), lr=0.1, steps_per_epoch=per_epoch, max_epochs=6)[done:]
