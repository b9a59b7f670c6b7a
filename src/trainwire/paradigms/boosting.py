"""Gradient-boosted trees (LightGBM) through the one loop: ``model=lightgbm`` with ``step=gbdt``.

``LightGBMModel`` is an ``nn.Module`` with no torch parameters that holds a LightGBM booster:
``forward`` is ``booster.predict``, so the ordinary ``objective=regression`` evaluates it and
the metrics are those of a neural regressor (``val/rmse``, ``val/mae``, ``val/mape``, ``val/r2``).
Its state dict carries the booster as its model string in a uint8 tensor (the module's extra
state), so a checkpoint stays ``weights_only``-loadable and digest-manifested, and the loop's
best-model restore keeps the best iteration.

``GBDTStep`` is ``step=gbdt``: ``setup`` turns the training data into arrays once,
and each epoch is one boosting round (run at the epoch's last batch), so ``trainer.max_epochs``
is the number of rounds and ``stopping.patience`` is counted in rounds. LightGBM is an optional
extra (``pip install 'trainwire[gbdt]'``), imported only when this model is built. See ADR 0020.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.loop.steps import Step, StepContext, StepResult
from trainwire.policies.objectives import Regression

EXTRA = "pip install 'trainwire[gbdt]'"
# trainwire's regression losses and the LightGBM objectives that minimise the same thing.
OBJECTIVES = {"mse": "regression", "mae": "regression_l1", "huber": "huber", "mape": "mape"}


def lightgbm() -> Any:
    """The ``lightgbm`` module, or a ConfigError that names the extra to install."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise ConfigError(f"model=lightgbm needs LightGBM, which is not installed ({EXTRA})") from None
    return lgb


def _known_parameters(lgb: Any) -> set[str] | None:
    """Every LightGBM parameter name and alias, or None when this LightGBM cannot list them."""
    # LightGBM's own Python package resolves aliases with this table; there is no public one.
    table = getattr(getattr(lgb.basic, "_ConfigAliases", None), "_get_all_param_aliases", None)
    if table is None:
        return None
    return {name for canonical, aliases in table().items() for name in (canonical, *aliases)}


_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})  # an empty, read-only default: a mapping config can extend


class LightGBMModel(nn.Module):
    """A LightGBM booster behind ``nn.Module``: ``forward(x)`` predicts ``[n, 1]``; the booster is its extra state.

    The named arguments are LightGBM parameters with their LightGBM names; ``params`` adds any
    other by name (``model.params.bagging_fraction=0.8``). Every value is checked when the model
    is built, by trainwire for the named ones and by LightGBM for all, before any data is read.
    """

    def __init__(self, num_leaves: int = 31, learning_rate: float = 0.05, min_data_in_leaf: int = 20,
                 feature_fraction: float = 1.0, lambda_l2: float = 0.0, max_depth: int = -1, num_threads: int = 0,
                 seed: int = 0, params: Mapping[str, Any] = _NO_PARAMS) -> None:
        lgb = lightgbm()
        super().__init__()
        named = {"num_leaves": num_leaves, "learning_rate": learning_rate, "min_data_in_leaf": min_data_in_leaf,
                 "feature_fraction": feature_fraction, "lambda_l2": lambda_l2, "max_depth": max_depth,
                 "num_threads": num_threads, "seed": seed}
        checks = {"num_leaves": num_leaves >= 2, "learning_rate": learning_rate > 0,
                  "min_data_in_leaf": min_data_in_leaf >= 0, "feature_fraction": 0 < feature_fraction <= 1,
                  "lambda_l2": lambda_l2 >= 0, "num_threads": num_threads >= 0}
        rules = {"num_leaves": ">= 2", "learning_rate": "> 0", "min_data_in_leaf": ">= 0",
                 "feature_fraction": "in (0, 1]", "lambda_l2": ">= 0", "num_threads": ">= 0 (0: LightGBM's default)"}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"model.{key}={named[key]!r} must be {rules[key]}")
        extra = dict(params or {})
        known = _known_parameters(lgb)
        for key in extra:
            if key in named:
                raise ConfigError(f"model.params.{key} repeats model.{key}; set it once, as model.{key}")
            if known is not None and key not in known:
                raise ConfigError(f"model.params.{key} is not a LightGBM parameter "
                                  "(see https://lightgbm.readthedocs.io/en/stable/Parameters.html)")
        self.params = {**named, **extra}
        _probe(lgb, self.params, set(named))
        self.booster: Any = None  # set by GBDTStep's first round, or by load_state_dict

    def forward(self, inputs: Tensor) -> Tensor:
        if self.booster is None:
            raise RuntimeError("the LightGBM model has no trees yet (train it with step=gbdt)")
        predictions = self.booster.predict(inputs.detach().cpu().double().numpy())
        return torch.as_tensor(predictions, dtype=torch.float32).reshape(len(inputs), -1).to(inputs.device)

    def get_extra_state(self) -> Tensor:
        """The booster as its LightGBM model string, UTF-8 bytes in a uint8 tensor (empty before the first round)."""
        if self.booster is None:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(self.booster.model_to_string().encode()), dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        text = bytes(state.cpu().numpy()).decode() if len(state) else ""
        self.booster = lightgbm().Booster(model_str=text) if text else None


def _probe(lgb: Any, params: dict[str, Any], named: set[str]) -> None:
    """Lets LightGBM check ``params`` on four rows of zeros; its refusal becomes one ConfigError naming the key."""
    try:
        data = lgb.Dataset(np.zeros((4, 1)), np.zeros(4), params={"verbosity": -1})
        lgb.Booster({**params, "objective": "regression", "verbosity": -1}, data)
    except lgb.basic.LightGBMError as error:
        message = str(error).split(" at /")[0].strip()
        found = re.search(r"\((\w+)\)", message)
        key = found.group(1) if found else None
        where = (f"model.{key}={params[key]!r}" if key in named else
                 f"model.params.{key}={params[key]!r}" if key in params else "model (LightGBM parameters)")
        raise ConfigError(f"{where} is refused by LightGBM: {message}") from None


class _RoundLoss:
    """The last round's training loss, kept across a resume (a stop lands between a round and its evaluation)."""

    def __init__(self) -> None:
        self.value = float("nan")

    def state_dict(self) -> dict[str, float]:
        return {"loss": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["loss"]


class GBDTStep(Step):
    """One LightGBM boosting round per epoch, at the epoch's last batch; the loop evaluates, stops and checkpoints.

    The first round of a fit (fresh, or after a resume that restored the model's booster) is
    ``lightgbm.train(..., num_boost_round=1, init_model=<the model's booster>)``, which keeps the
    booster's trees and goes on from them; every later round is ``booster.update()``.
    """

    optimizer = None  # no torch optimizer: hooks see ``state.optimizer`` as None
    checks_first_batch = False  # no trees before the first round to run forward; setup checks every row instead

    def check(self, settings: Any, strategy: Any) -> None:
        refusals = {"strategy": (strategy.name, "single"), "trainer.precision": (settings.precision, "32"),
                    "trainer.accumulate_steps": (settings.accumulate_steps, 1)}
        for key, (value, supported) in refusals.items():
            if value != supported:
                raise ConfigError(f"step=gbdt boosts trees in one process on float64 arrays; {key}={value!r} is "
                                  f"not supported (use {key}={supported})")

    def setup(self, model: nn.Module, context: StepContext) -> dict[str, Any]:
        if not isinstance(model, LightGBMModel):
            raise ConfigError(f"step=gbdt needs model=lightgbm; got {type(model).__name__}")
        objective = getattr(context.objective, "objective", context.objective)  # under a metric schedule
        if not isinstance(objective, Regression):
            raise ConfigError(f"step=gbdt fits objective=regression; got {type(objective).__name__}")
        loss = getattr(objective.loss, "name", None)
        if loss not in OBJECTIVES:
            raise ConfigError(f"objective.loss.name={loss!r}: step=gbdt boosts one of {', '.join(OBJECTIVES)}")
        self.params = {**model.params, "objective": OBJECTIVES[loss], "metric": "l2", "verbosity": -1}
        if loss == "huber":
            self.params["alpha"] = objective.loss.params.get("delta", 1.0)
        inputs, targets = zip(*((batch[0], batch[1]) for batch in context.train_data))  # once: trees see all rows
        self.inputs = torch.cat(inputs).double().reshape(sum(len(x) for x in inputs), -1).numpy()
        self.targets = torch.cat(targets).double().reshape(len(self.inputs), -1)
        if self.targets.shape[1] != 1:
            raise ConfigError(f"step=gbdt predicts one target; the data have {self.targets.shape[1]}")
        self.targets = self.targets[:, 0].numpy()
        self.model, self.context, self.training, self.loss = model, context, None, _RoundLoss()
        return {"gbdt": self.loss}

    def plan(self) -> dict[str, Any]:
        return {"step": "gbdt", **{f"model.{key}": value for key, value in self.model.params.items()}}

    def start(self, model: nn.Module, resumed: bool) -> None:
        self.training = None  # the next round starts from whatever booster the model now holds

    def train_step(self, module: nn.Module, batch: Any, index: int) -> StepResult:
        if index + 1 < self.context.batches_per_epoch:  # the round runs once the epoch's batches are through
            return StepResult(torch.tensor(self.loss.value))
        if self.training is None:
            lgb = lightgbm()
            data = lgb.Dataset(self.inputs, self.targets, params={"verbosity": -1})
            self.training = lgb.train(self.params, data, num_boost_round=1, init_model=self.model.booster,
                                      keep_training_booster=True)
            self.model.booster = self.training
        else:
            self.training.update()
        self.loss.value = float(self.training.eval_train()[0][2])  # l2 on the training rows (LightGBM's cached scores)
        return StepResult(torch.tensor(self.loss.value), counted=True, taken=True)

    def _trees(self) -> float:
        return float(self.model.booster.current_iteration()) if self.model.booster is not None else 0.0

    def log_values(self) -> dict[str, float]:
        return {"train/loss": self.loss.value, "train/trees": self._trees()}

    def end_epoch(self, model: nn.Module, metrics: dict[str, float]) -> None:
        metrics["train/epoch_loss"] = self.loss.value
        metrics["train/trees"] = self._trees()
