"""``trainer.compile=true``: trains, checkpoints the plain module, resumes exactly, and resumes across compiled and not.

Slow: torch.compile's first compile takes tens of seconds on a small shared machine (a C++
compiler builds the kernels). Every fit here uses the same model and settings so that later
fits reuse what the first compiled.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer

from trainwire import ConfigError, TrainerSettings
from trainwire.checkpointing.store import LocalCheckpointStore, read_checkpoint
from trainwire.errors import TrainingInterrupted
from trainwire.loop.signals import StopToken
from trainwire.models import MLP
from trainwire.testing import RecordingHook

pytestmark = pytest.mark.slow


def model() -> MLP:
    torch.manual_seed(0)
    return MLP(8, 3, hidden=[16, 16], checkpointing=True)  # gradient checkpointing under compile too


def settings(**extra) -> TrainerSettings:
    return TrainerSettings(**{"max_epochs": 2, "device": "cpu", "accumulate_steps": 2, "log_every_n_steps": 1,
                              "compile": True, **extra})


class StopAt:
    """A hook that asks the run to stop once ``step`` optimizer steps are done."""

    def __init__(self, token: StopToken, step: int) -> None:
        self.token, self.step = token, step

    def on_batch_end(self, state, loss):
        if state.step + 1 >= self.step:
            self.token.stop()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    from conftest import batches, blobs

    x, y = blobs()
    train, val = batches(x[:192], y[:192], 16), batches(x[192:], y[192:], 32)
    directory = tmp_path_factory.mktemp("whole")
    hook = RecordingHook()
    trained = model()
    result = make_trainer(settings=settings(), checkpoints=LocalCheckpointStore(directory), hooks=[hook]).fit(
        trained, train, val)
    return train, val, trained, result, hook, directory


def test_a_compiled_run_trains_with_hooks_and_checkpoints_the_plain_module(whole):
    train, val, trained, result, hook, directory = whole
    assert result.steps == 2 * len(train) // 2
    assert result.history[-1]["val/accuracy"] > 0.8
    assert [name for name, _, _ in hook.events].count("on_batch_end") == 2 * len(train)
    saved = read_checkpoint(directory / "last.pt")
    assert not any(key.startswith("_orig_mod.") for key in saved["model"])
    assert set(saved["model"]) == set(model().state_dict())
    # Validation runs in eval mode: one recompilation of the same frame, counted, and nothing more.
    assert result.history[-1]["compile/recompiles"] >= 1 and result.summary()["compile/recompiles"] >= 1
    eager = model()
    make_trainer(settings=settings(compile=False)).fit(eager, train, val)
    for (name, a), b in zip(trained.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # the same training, kernels aside


def test_a_compiled_run_stopped_and_resumed_compiled_ends_exactly_as_one_run(whole, tmp_path):
    train, val, trained, result, _, _ = whole
    token = StopToken()
    store = LocalCheckpointStore(tmp_path)
    with pytest.raises(TrainingInterrupted):
        make_trainer(settings=settings(), checkpoints=store, hooks=[StopAt(token, 9)]).fit(model(), train, val, stop=token)
    resumed = model()
    again = make_trainer(settings=settings(resume="auto"), checkpoints=store).fit(resumed, train, val)
    assert again.steps == result.steps
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("compiled_first", [True, False])
def test_a_checkpoint_resumes_across_compiled_and_uncompiled(whole, tmp_path, compiled_first):
    train, val, trained, _, _, _ = whole
    token = StopToken()
    store = LocalCheckpointStore(tmp_path)
    with pytest.raises(TrainingInterrupted):
        make_trainer(settings=settings(compile=compiled_first), checkpoints=store,
                     hooks=[StopAt(token, 9)]).fit(model(), train, val, stop=token)
    resumed = model()
    make_trainer(settings=settings(compile=not compiled_first, resume="auto"), checkpoints=store).fit(resumed, train, val)
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_a_compiled_gan_trains_its_compiled_critic_and_generator(tmp_path):
    from trainwire.config import compose
    from trainwire.containers import run

    result = run(compose([f"run_dir={tmp_path}", "experiment=gan", "paradigm.stage=false", "trainer.max_epochs=1",
                          "trainer.compile=true", "data.batch_size=128"]))
    assert result.steps > 0 and result.history[0]["train/generator_loss"] == result.history[0]["train/generator_loss"]
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert any(key.startswith("critic.") for key in saved["model"])
    assert not any("_orig_mod" in key for key in saved["model"])


def test_a_bad_compile_mode_names_the_key():
    with pytest.raises(ConfigError, match="trainer.compile_mode='fastest'"):
        TrainerSettings(compile=True, compile_mode="fastest")
