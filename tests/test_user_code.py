"""A researcher's own model, data and task: from the CLI and from Python, with defaults that never get in the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import clean_env, talk
from conftest import trainwire as run_trainwire
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.data import Loaders, ResumableSampler, ShardBatches, as_loaders
from trainwire.errors import ConfigError
from trainwire.loop.trainer import Trainer, TrainerSettings
from trainwire.policies.losses import build_loss
from trainwire.policies.objectives import ModelLoss, Regression
from trainwire.testing import capture_logs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

class Linear(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    def forward(self, x):
        return self.net(x)

SEEN = {}

def loaders(seed, rank, world_size, batch_size, scale=1.0):
    SEEN.update(seed=seed, rank=rank, world_size=world_size, batch_size=batch_size, scale=scale)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(96, 64, generator=g) * scale, torch.randint(0, 10, (96,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True), None

def datasets():
    x, y = torch.rand(100, 64), torch.randint(0, 10, (100,))
    return TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])

def nothing_useful():
    return {"train": 1}
'''


def _env(**extra: str) -> dict[str, str]:
    return clean_env("PYTHONPATH", **extra)  # the examples must run without the test folder on the path


def trainwire(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_trainwire(*args, cwd=cwd, env=_env())


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's, importable as ``userlab`` (the CLI puts the working directory on sys.path)."""
    (tmp_path / "userlab.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("userlab", None)


# --- the CLI sees the user's code --------------------------------------------------------------
@pytest.mark.slow
def test_the_cnn_example_trains_from_its_folder_through_the_console_script(tmp_path):
    done = trainwire("train", "model._target_=shapes.SmallCNN", "+model.channels=8", "data._target_=shapes.images",
                     "trainer.max_epochs=6", "optimizer.lr=0.01", "data.batch_size=32", "progress=never",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=EXAMPLES / "cnn")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val/accuracy"] > 0.9  # three shapes: chance is 1/3
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "_target_: shapes.SmallCNN" in config and "channels: 8" in config


@pytest.mark.slow
def test_a_data_target_returning_something_else_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "userlab.py").write_text(USER_MODULE)
    done = trainwire("train", "data._target_=userlab.nothing_useful", "model._target_=userlab.Linear",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = talk(done.stderr)  # after the run's first log records: the data are read once the run started
    assert len(lines) == 1 and "data=userlab.nothing_useful returned dict {'train': 1}" in lines[0], done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


# --- `group._target_=` in every slot ------------------------------------------------------------
def test_model_and_data_targets_just_work_with_extra_arguments(user_module, tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "model._target_=userlab.Linear", "+model.width=8",
                   "data._target_=userlab.loaders", "+data.scale=2.0", "data.batch_size=16", "seed=7",
                   "trainer.max_epochs=2", "stopping.monitor=train/epoch_loss", "progress=never"])
    assert cfg.model == {"_target_": "userlab.Linear", "width": 8, "_given_": ["width"]}  # _given_: ADR 0025
    with capture_logs() as records:
        result = run(cfg)
    import userlab

    # The target declared seed, rank, world_size and batch_size: it received them; its own key too.
    assert userlab.SEEN == {"seed": 7, "rank": 0, "world_size": 1, "batch_size": 16, "scale": 2.0}
    assert result.steps == 2 * 6
    # A shuffled DataLoader of the user's cannot be resumed exactly: said once, and in the summary.
    warnings = [r for r in records if r["event"] == "data_order_not_resumable"]
    assert len(warnings) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["notes"] == [next(n for n in summary["notes"] if "RandomSampler" in n)]


def test_datasets_get_trainwires_resumable_sharded_loaders(user_module, tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "model._target_=userlab.Linear", "data._target_=userlab.datasets",
                   "data.batch_size=20", "trainer.max_epochs=1"])
    loaders = build_container(cfg).data()
    assert isinstance(loaders.train.batch_sampler, ResumableSampler) and len(loaders.train) == 4
    assert isinstance(loaders.val.batch_sampler, ShardBatches)
    result = run(cfg)
    assert "notes" not in result.summary()  # resumable: nothing to warn about


@pytest.mark.parametrize("slot,target,kind", [
    ("lr", "trainwire.policies.lr.Constant", "Constant"),
    ("stopping", "trainwire.policies.stopping.NeverStop", "NeverStop"),
    ("gradient", "trainwire.policies.gradients.NoClip", "NoClip"),
    ("objective", "trainwire.policies.objectives.Classification", "Classification"),
])
def test_every_slot_takes_a_target(slot, target, kind, tmp_path):
    container = build_container(compose([f"run_dir={tmp_path}", f"{slot}._target_={target}"]))
    provider = {"lr": container.lr_policy, "stopping": container.stopping_policy,
                "gradient": container.gradient_policy, "objective": container.objective}[slot]
    assert type(provider()).__name__ == kind


def test_an_optimizer_target_is_built_partially_with_its_arguments(tmp_path):
    container = build_container(compose([f"run_dir={tmp_path}", "optimizer._target_=torch.optim.SGD",
                                         "+optimizer.lr=0.5"]))
    optimizer = container.optimizer()([nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("overrides,message", [
    (["model._target_=nolab.Net"], "model._target_='nolab.Net' cannot be imported: No module named 'nolab'"),
    (["model._target_=torch.nn.NoSuchLayer"], "model._target_='torch.nn.NoSuchLayer': torch.nn has no NoSuchLayer"),
    (["model=custom"], "model._target_='???': name a class or function"),
    (["lr._target_=torch.nn.Linear", "+lr.in_features=1", "+lr.out_features=1"],
     "built a Linear, which is not a trainwire.policies.lr.LRPolicy"),
    (["lr._target_=trainwire.policies.lr.Constant", "+lr.bogus=1"], "lr._target_='trainwire.policies.lr.Constant' failed: TypeError"),
])
def test_a_bad_target_is_one_line_naming_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        build_container(compose([f"run_dir={tmp_path}", *overrides]))
    assert message in str(error.value) and "\n" not in str(error.value)


# --- the data contract ---------------------------------------------------------------------------
def _set(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(float(n)).unsqueeze(1), torch.zeros(n, dtype=torch.long))


def test_the_data_contract_accepts_pairs_loaders_datasets_and_single_loaders():
    train, val = DataLoader(_set(), batch_size=5), DataLoader(_set(), batch_size=5)
    assert as_loaders((train, val)) == Loaders(train, val)
    assert as_loaders([train, None]) == Loaders(train, None)
    assert as_loaders(Loaders(train, val)) == Loaders(train, val)
    assert as_loaders(train) == Loaders(train, None)
    built = as_loaders((_set(10), _set(4)), {"batch_size": 3, "num_workers": 0}, seed=1, rank=1, world_size=2)
    assert [len(b[0]) for b in built.train] == [3, 2]  # global batches of 6 and 4, this rank's half of each
    assert sum(len(b[0]) for b in built.val) == 2


@pytest.mark.parametrize("returned,shown", [
    (42, "int 42"), ((1, 2, 3), "a tuple of 3 (int, int, int)"), ((torch.zeros(3), torch.zeros(3)), "a tuple of 2"),
    ((DataLoader(_set()), "val"), "a tuple of 2 (DataLoader, str)"),
])
def test_anything_else_is_one_line_naming_data_the_target_and_what_it_returned(returned, shown):
    with pytest.raises(ConfigError) as error:
        as_loaders(returned, {"_target_": "mylab.make"})
    assert str(error.value).startswith(f"data=mylab.make returned {shown}")


# --- objective=model_loss ------------------------------------------------------------------------
class DictLM(nn.Module):
    """A Hugging Face-shaped model: ``forward(input_ids, labels)`` returns an object with ``.loss``."""

    class Output:
        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits

    def __init__(self, vocab: int = 8) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return self.Output(loss, logits)


def _sequences(n: int, length: int = 6, vocab: int = 8):
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(n))
    return [{"input_ids": ids[i : i + 4], "labels": (ids[i : i + 4] + 1) % vocab} for i in range(0, n, 4)]


def test_a_dict_batch_model_learns_with_model_loss():
    train, val = _sequences(64), _sequences(16)
    objective = ModelLoss()
    model = DictLM()
    before = objective.evaluate(model, val)
    trainer = Trainer(objective=objective, optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                      settings=TrainerSettings(max_epochs=5, log_every_n_steps=1000))
    result = trainer.fit(model, train, val)
    after = result.history[-1]
    assert after["val/loss"] < 0.2 * before["loss"]  # the next token is the current one + 1: learnable exactly
    assert after["val/perplexity"] == pytest.approx(torch.tensor(after["val/loss"]).exp().item())


def test_model_loss_weights_validation_by_target_tokens_and_calls_tuple_batches_positionally():
    class Fixed(nn.Module):
        def forward(self, input_ids, labels):
            return {"loss": labels.float().mean() * 0 + input_ids.float()[0, 0]}  # a batch's loss is its first id

    batches = [{"input_ids": torch.tensor([[1.0]]), "labels": torch.tensor([[3, -100, -100, -100]])},
               {"input_ids": torch.tensor([[5.0]]), "labels": torch.tensor([[1, 2, 3, -100]])}]
    metrics = ModelLoss().evaluate(Fixed(), batches)
    assert metrics["loss"] == pytest.approx((1 * 1 + 5 * 3) / 4)  # weighted by 1 and 3 target tokens, not 1:1
    assert "perplexity" in metrics

    class Pair(nn.Module):
        def forward(self, x, y):
            return ((x - y) ** 2).mean()

    tuples = [(torch.ones(2, 1), torch.zeros(2, 1)), (torch.zeros(6, 1), torch.zeros(6, 1))]
    assert ModelLoss().evaluate(Pair(), tuples) == {"loss": pytest.approx(2 / 8)}  # weighted by samples; no labels


def test_model_loss_says_what_the_model_returned_when_there_is_no_loss():
    with pytest.raises(ConfigError, match=r"^objective=model_loss: the model returned a Tensor of shape \(2, 3\)"):
        ModelLoss().training_loss(nn.Identity(), torch.zeros(2, 3))


@pytest.mark.slow
def test_the_char_lm_example_reports_perplexity_from_python(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "char_lm" / "char_lm.py"), str(tmp_path / "run")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["monitor"] == "val/perplexity" and summary["val/perplexity"] < 20  # uniform over ASCII: 128
    assert "val/perplexity" in done.stdout


# --- defaults that never make a valid run invalid -------------------------------------------------
@pytest.mark.parametrize("overrides", [["trainer.max_epochs=1"], ["lr.warmup_steps=5", "trainer.max_epochs=2"],
                                       ["lr.warmup_epochs=1", "trainer.max_epochs=2"]])
def test_the_first_things_users_type_train_with_the_defaults(overrides, tmp_path):
    result = run(compose([f"run_dir={tmp_path}", "progress=never", *overrides]))
    assert result.epochs_completed == int(overrides[-1].rpartition("=")[2])


def test_explicit_warmup_still_refused_when_both_or_as_long_as_the_run(tmp_path):
    with pytest.raises(ConfigError, match="lr.warmup_epochs=1 and lr.warmup_steps=5 are both set"):
        build_container(compose([f"run_dir={tmp_path}", "lr.warmup_steps=5", "lr.warmup_epochs=1"]))
    with pytest.raises(ConfigError, match=r"lr.warmup_epochs=1 must be shorter than the run \(trainer.max_epochs=1"):
        run(compose([f"run_dir={tmp_path}", "lr.warmup_epochs=1", "trainer.max_epochs=1"]))


def test_the_packaged_warmup_is_a_fraction_of_the_run():
    from trainwire.policies.lr import WarmupCosine, preview

    lrs = preview(WarmupCosine(warmup_ratio=0.1), lr=1.0, steps_per_epoch=10, max_epochs=2)
    assert lrs.index(max(lrs)) == 2  # 10 % of 20 steps warm up; the peak is at step 2
    lrs = preview(WarmupCosine(warmup_ratio=0.1, warmup_steps=5), lr=1.0, steps_per_epoch=10, max_epochs=2)
    assert lrs.index(max(lrs)) == 5  # given steps win over the ratio


# --- shape and scale traps --------------------------------------------------------------------------
def test_physics_informed_penalises_a_b_t_1_output_along_the_sequence():
    rising = torch.arange(4.0).reshape(1, 4, 1)  # (B, T, 1): the model's usual output
    targets = torch.arange(4.0).reshape(1, 4)
    loss = build_loss("physics_informed", monotonicity=1.0, smoothness=0.0)
    assert loss(rising, targets).item() == pytest.approx(1.0)  # squared error 0 + each of 3 rises of 1, squared


def test_a_regression_shape_mismatch_is_one_clear_error():
    objective = Regression()
    with pytest.raises(ConfigError, match=r"predictions of shape \(4, 2\) and targets of shape \(4, 3\)"):
        objective.training_loss(nn.Linear(3, 2), (torch.zeros(4, 3), torch.zeros(4, 3)))
    with pytest.raises(ConfigError, match=r"predictions of shape \(4, 1\) and targets of shape \(2, 2\)"):
        objective.training_loss(nn.Linear(3, 1), (torch.zeros(4, 3), torch.zeros(2, 2)))


@pytest.mark.slow
def test_the_battery_example_fits_decreasing_curves_with_physics_informed(tmp_path):
    done = trainwire("train", "model._target_=battery.CapacityLSTM", "data._target_=battery.cells", "objective=regression",
                     "objective.loss=physics_informed", "stopping.monitor=val/rmse", "trainer.max_epochs=15",
                     "optimizer.lr=0.01", "data.batch_size=16", "progress=never", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=EXAMPLES / "battery")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val/r2"] > 0.8 and summary["val/rmse"] < 0.05 and summary["val/mape"] < 0.05
    assert summary["val/mae"] < summary["val/rmse"] * 1.01
