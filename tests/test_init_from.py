"""trainer.init_from: a new run starts from another's weights (weights only), strict about keys unless told not to."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_trainer

from trainwire import TrainerSettings
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.initial import load_initial_weights
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.errors import ConfigError
from trainwire.logs import get_logger
from trainwire.testing import RecordingSink

QUICK = ["data.batch_size=256"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-epoch run of the bundled digits, its best.pt kept."""
    run_dir = tmp_path_factory.mktemp("source")
    result = run(compose([f"run_dir={run_dir}", "trainer.max_epochs=2", "optimizer.lr=0.02", *QUICK]))
    return run_dir, result


def test_a_run_started_from_a_best_pt_with_a_near_zero_lr_opens_at_its_validation_loss(tmp_path, source):
    run_dir, trained = source
    started = run(compose([f"run_dir={tmp_path}", "trainer.max_epochs=1", *QUICK, "optimizer.lr=1e-12",
                           f"trainer.init_from={run_dir / 'checkpoints' / 'best.pt'}"]))
    assert trained.best_value < 1.5  # (a fresh model opens near ln(10) = 2.3)
    assert started.history[0]["val/loss"] == pytest.approx(trained.best_value, rel=1e-5)


def test_every_kind_of_source_gives_the_best_weights(tmp_path, source):
    from safetensors.torch import save_file

    run_dir, _ = source
    best = read_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    torch.save(best, tmp_path / "plain.pt")
    save_file(best, tmp_path / "weights.safetensors")
    for given in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "best.pt", tmp_path / "plain.pt",
                  tmp_path / "weights.safetensors"):
        model = build_container(compose([f"run_dir={tmp_path / 'unused'}", *QUICK])).model()
        load_initial_weights(model, given, strict=True, log=get_logger())
        assert all(torch.equal(best[key], value) for key, value in model.state_dict().items()), given


def test_keys_that_do_not_fit_are_one_line_before_training_and_init_strict_false_loads_those_that_fit(tmp_path):
    weights = make_model(seed=1).state_dict()
    weights["head.weight"] = weights.pop("0.bias")  # one key missing, one unexpected
    torch.save(weights, tmp_path / "other.pt")
    settings = {"max_epochs": 1, "device": "cpu", "init_from": str(tmp_path / "other.pt")}
    sink, model = RecordingSink(), make_model(seed=0)
    x = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    with pytest.raises(ConfigError) as refused:
        make_trainer(settings=TrainerSettings(**settings), sink=sink).fit(model, x)
    assert str(refused.value) == (f"trainer.init_from={str(tmp_path / 'other.pt')!r} does not fit the model (missing "
                                  "'0.bias'; unexpected 'head.weight'); set trainer.init_strict=false to load the keys "
                                  "that fit")
    assert not sink.started
    before = model.state_dict()["0.bias"].clone()
    load_initial_weights(model, tmp_path / "other.pt", strict=False, log=get_logger())
    assert torch.equal(model.state_dict()["0.weight"], weights["0.weight"])  # what fits is loaded
    assert torch.equal(model.state_dict()["0.bias"], before)  # the rest is left as initialised
    with pytest.raises(ConfigError, match=r"trainer.init_from='.*nowhere.pt': no such file or folder"):
        make_trainer(settings=TrainerSettings(**{**settings, "init_from": str(tmp_path / "nowhere.pt")})).fit(model, x)


def test_a_run_started_from_weights_resumes_from_its_own_checkpoint_without_them(tmp_path):
    from trainwire.checkpointing.store import LocalCheckpointStore

    torch.save(make_model(seed=1).state_dict(), tmp_path / "start.pt")
    x = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(3)]

    def fit(epochs):
        settings = TrainerSettings(max_epochs=epochs, device="cpu", resume="auto", init_from=str(tmp_path / "start.pt"))
        return make_trainer(settings=settings, checkpoints=LocalCheckpointStore(tmp_path / "ck")).fit(make_model(), x)

    fit(1)
    (tmp_path / "start.pt").unlink()  # the source is gone: the run's checkpoint holds what it needs
    assert fit(2).epochs_completed == 2
