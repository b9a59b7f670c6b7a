"""The loss registry: each built-in against a hand computation, reductions, user losses, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from trainwire import ConfigError, Regression
from trainwire.config import compose
from trainwire.containers import build_container
from trainwire.policies.losses import Loss, available_losses, build_loss, register_loss

P = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 0.5]])
T = torch.tensor([[1.5, 2.0, 1.0], [0.5, 1.0, 0.5]])
# errors p - t: [[-0.5, 0, 3], [-0.5, -2, 0]]


def close(tensor, expected):
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=torch.float32))


def test_mse_mae_by_hand():
    squares = [[0.25, 0.0, 9.0], [0.25, 4.0, 0.0]]
    close(build_loss("mse", "none")(P, T), squares)
    close(build_loss("mse")(P, T), 13.5 / 6)
    close(build_loss("mse", "sum")(P, T), 13.5)
    close(build_loss("mae", "none")(P, T), [[0.5, 0.0, 3.0], [0.5, 2.0, 0.0]])
    close(build_loss("mae")(P, T), 6.0 / 6)
    close(build_loss("mae", "sum")(P, T), 6.0)


def test_huber_by_hand():
    # |e| <= delta: e^2 / 2; otherwise delta * (|e| - delta / 2). delta = 1: 0.125, 0, 2.5, 0.125, 1.5, 0
    close(build_loss("huber", "none", delta=1.0)(P, T), [[0.125, 0.0, 2.5], [0.125, 1.5, 0.0]])
    close(build_loss("huber", "sum", delta=1.0)(P, T), 4.25)
    # delta = 0.5: |e| = 0.5 is inside: 0.125; 3 -> 0.5 * 2.75 = 1.375; 2 -> 0.5 * 1.75 = 0.875
    close(build_loss("huber", delta=0.5)(P, T), (0.125 + 1.375 + 0.125 + 0.875) / 6)


def test_mape_by_hand_guards_zero_targets_with_epsilon():
    t = torch.tensor([2.0, -4.0, 0.0])
    p = torch.tensor([1.0, -5.0, 0.1])
    close(build_loss("mape", "none", epsilon=0.01)(p, t), [0.5, 0.25, 0.1 / 0.01])
    close(build_loss("mape", epsilon=0.01)(p, t), (0.5 + 0.25 + 10.0) / 3)


def test_physics_informed_by_hand():
    p = torch.tensor([[3.0, 4.0, 2.0, 2.0]])  # diffs 1, -2, 0 (one increase of 1); second diffs -3, 2
    t = torch.tensor([[3.0, 3.0, 2.0, 1.0]])  # errors 0, 1, 0, 1 -> mse 0.5
    loss = build_loss("physics_informed", "none", monotonicity=2.0, smoothness=0.5)
    expected = 0.5 + 2.0 * (1.0 / 3) + 0.5 * ((9.0 + 4.0) / 2)
    close(loss(p, t), [expected])
    # A non-increasing, straight sequence has no penalty: the loss is the plain mse.
    flat = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    close(loss(flat, flat + 1), [1.0])
    two = torch.cat([p, flat])
    close(build_loss("physics_informed", "sum", monotonicity=2.0, smoothness=0.5)(two, torch.cat([t, flat + 1])),
          expected + 1.0)


def test_registry_lists_builtins_and_takes_a_users_loss():
    names = set(available_losses())
    assert {"mse", "mae", "huber", "mape", "physics_informed"} <= names
    assert available_losses()["huber"] == {"delta": 1.0, "reduction": "mean"}

    @register_loss("test_log_cosh")
    def log_cosh(predictions, targets, scale: float = 1.0):
        return scale * torch.log(torch.cosh(predictions - targets))

    assert available_losses()["test_log_cosh"] == {"scale": 1.0, "reduction": "mean"}
    loss = build_loss("test_log_cosh", "sum", scale=2.0)
    close(loss(torch.tensor([1.0]), torch.tensor([0.0])), 2.0 * math.log(math.cosh(1.0)))
    objective = Regression(loss={"name": "test_log_cosh", "scale": 2.0})
    assert objective.loss == Loss("test_log_cosh", "mean", {"scale": 2.0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "huber", "delta": 0.0}, "objective.loss.delta=0.0 must be > 0"),
     ({"name": "mape", "epsilon": -1.0}, "objective.loss.epsilon=-1.0 must be > 0"),
     ({"name": "physics_informed", "monotonicity": -0.1}, "objective.loss.monotonicity=-0.1 must be >= 0"),
     ({"name": "mse", "reduction": "avg"}, "objective.loss.reduction='avg' is not one of mean, sum, none"),
     ({"name": "mse", "delta": 1.0}, "objective.loss.delta is not a parameter of loss 'mse'"),
     ({"name": "nope"}, "objective.loss.name='nope' is not a registered loss; available: ")],
)
def test_bad_loss_values_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as caught:
        build_loss(**kwargs)
    assert "\n" not in str(caught.value)


def test_regression_cannot_train_on_an_unreduced_loss():
    with pytest.raises(ConfigError, match="objective.loss.reduction='none' cannot train"):
        Regression(loss={"name": "mse", "reduction": "none"})


def test_the_issue_form_selects_and_parametrises_the_loss_from_config(tmp_path):
    for form in ("objective.loss=huber", "objective/loss=huber"):
        cfg = compose([f"run_dir={tmp_path}", "data=diabetes", "objective=regression", form, "objective.loss.delta=0.5"])
        assert build_container(cfg).objective().loss == Loss("huber", "mean", {"delta": 0.5})
    assert build_container(compose(["data=diabetes", "objective=regression"])).objective().loss.name == "mse"
    with pytest.raises(ConfigError, match="objective.loss.delta=-0.5 must be > 0"):
        build_container(compose(["data=diabetes", "objective=regression", "objective.loss=huber",
                                 "objective.loss.delta=-0.5"]))
    with pytest.raises(Exception, match="objective.loss.deltaa"):  # a wrong key fails at composition
        compose(["data=diabetes", "objective=regression", "objective.loss=huber", "objective.loss.deltaa=1"])
    with pytest.raises(ConfigError, match="objective/loss='hubr' is not an option; choose one of: huber, mae"):
        compose(["objective=regression", "objective.loss=hubr"])


def test_huber_trains_less_swayed_by_an_outlier_than_mse():
    """The chosen loss really drives training: with one huge outlier, huber's fit stays near the bulk."""
    x = torch.linspace(-1, 1, 32).unsqueeze(-1)
    y = 2 * x
    y[0] = 100.0
    slopes = {}
    for name in ("mse", "huber"):
        objective = Regression(loss=name)
        model = torch.nn.Linear(1, 1)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(300):
            optimizer.zero_grad()
            objective.training_loss(model, (x, y)).backward()
            optimizer.step()
        slopes[name] = model.weight.item()
    assert abs(slopes["huber"] - 2.0) < 0.5 < abs(slopes["mse"] - 2.0)
