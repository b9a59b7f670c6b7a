"""Adversarial-robustness training: an Objective wrapper; robust accuracy under PGD beats plain training."""

from __future__ import annotations

import functools

import pytest
import torch

from trainwire import Classification, ConfigError, Trainer, TrainerSettings
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.data import digits
from trainwire.models import MLP
from trainwire.paradigms.adversarial import FGSM, PGD, AdversarialObjective


def test_attacks_stay_in_the_epsilon_ball_raise_the_loss_and_leave_parameter_grads_alone():
    torch.manual_seed(0)
    model = MLP(64, 10, [32])
    x, y = next(iter(digits(batch_size=128, seed=0).train))
    loss = lambda inputs: Classification().training_loss(model, (inputs, y))  # noqa: E731
    clean = loss(x).item()
    for attack in (FGSM(0.1), PGD(0.1, steps=5)):
        adv = attack.perturb(loss, x)
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert loss(adv).item() > clean
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_training_beats_plain_training_under_pgd():
    data = digits(batch_size=64, seed=0)
    judge = AdversarialObjective(Classification(), PGD(0.1, steps=10))
    robust = {}
    for name, objective in (("plain", Classification()), ("pgd", AdversarialObjective(Classification(), PGD(0.1, 3)))):
        torch.manual_seed(0)
        model = MLP(64, 10, [64])
        Trainer(objective=objective, optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
                settings=TrainerSettings(max_epochs=8, device="cpu")).fit(model, data.train)
        model.eval()
        with torch.no_grad():  # as the Trainer evaluates: the wrapper turns gradients back on for the attack
            robust[name] = judge.evaluate(model, data.val)
    # Measured: robust accuracy 0.733 (PGD-trained) vs 0.546 (plain); clean 0.930 vs 0.964.
    assert robust["pgd"]["robust_accuracy"] > robust["plain"]["robust_accuracy"] + 0.1
    assert robust["plain"]["accuracy"] > robust["plain"]["robust_accuracy"] + 0.2  # the attack is real


def test_experiment_adversarial_logs_robust_metrics(tmp_path):
    result = run(compose(["experiment=adversarial", f"run_dir={tmp_path}", "trainer.max_epochs=2", "lr.warmup_epochs=1",
                          "objective.attack=fgsm"]))
    assert result.monitor == "val/robust_accuracy"
    assert {"val/accuracy", "val/robust_accuracy", "val/robust_loss"} <= set(result.history[-1])
    assert result.history[-1]["val/robust_accuracy"] < result.history[-1]["val/accuracy"]


@pytest.mark.parametrize(("override", "message"), [
    ("objective.epsilon=0", "objective.epsilon=0.0 must be > 0"),
    ("objective.steps=0", "objective.steps=0 must be an integer >= 1"),
    ("objective.attack=cw", "objective.attack='cw' is not one of fgsm, pgd"),
])
def test_bad_attack_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_container(compose(["experiment=adversarial", override]))
