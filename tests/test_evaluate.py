"""The test split (ADR 0034) and `trainwire evaluate`: a finished run's best weights, scored again."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from trainwire.cli.main import main
from trainwire.config import compose
from trainwire.containers import run
from trainwire.data import as_loaders, digits
from trainwire.errors import ConfigError
from trainwire.testing import read_metrics


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run on digits with a test split: 2 epochs of 64 training samples."""
    folder = tmp_path_factory.mktemp("run")
    run(compose([f"run_dir={folder}", "trainer.max_epochs=2", "data.train_samples=64", "data.test_fraction=0.2",
                 "progress=never"]))
    return folder


def evaluate(*args: object) -> int:
    """``trainwire evaluate *args`` in this process; its exit status."""
    try:
        main(["evaluate", *map(str, args)])
    except SystemExit as exit_:
        return exit_.code
    return 0


def files(folder) -> dict[str, tuple[int, bytes]]:
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_best_weights_are_scored_once_on_the_test_split(finished):
    summary = json.loads((finished / "summary.json").read_text())
    rows = read_metrics(finished)
    assert {"test/loss", "test/accuracy"} <= summary.keys()
    assert [row for row in rows if "test/loss" in row] == rows[-1:]  # once, after the last epoch
    assert rows[-1]["test/loss"] == summary["test/loss"]
    assert summary["best_epoch"] is not None


def test_a_test_fraction_holds_samples_out_and_leaves_the_other_splits_as_they_were():
    plain, held = digits(), digits(test_fraction=0.25)
    assert torch.equal(plain.val.dataset.tensors[0], held.val.dataset.tensors[0])  # validation first: unchanged
    n_train, n_val, n_test = (len(part.dataset) for part in held)
    assert (n_val, n_test, n_train + n_val + n_test) == (359, 449, 1797)
    assert plain.test is None
    for bad in (-0.1, 0.8, "x"):
        with pytest.raises(ConfigError, match="data.test_fraction"):
            digits(test_fraction=bad)


def test_a_data_target_may_return_a_test_split():
    data = TensorDataset(torch.zeros(10, 2), torch.zeros(10))
    loaders = as_loaders((data, data, data), {"batch_size": 4})
    assert len(loaders.test) == 1 and len(loaders.val) == 1  # validation batches are 4x larger
    assert as_loaders((data, None), {}).test is None
    with pytest.raises(ConfigError, match=r"\(train, val, test\)"):
        as_loaders((data, data, object()), {})


def test_evaluate_scores_a_runs_best_weights_and_writes_nothing(finished, capsys):
    summary = json.loads((finished / "summary.json").read_text())
    before = files(finished)
    assert evaluate(finished, "--json") == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["split"] == "test" and scored["checkpoint"].endswith("best.pt")
    assert scored["metrics"] == {key: summary[key] for key in ("test/loss", "test/accuracy")}  # the trainer's own pass
    # Without the test split (validation comes first, so it is the run's), at another batch size: the best epoch's.
    assert evaluate(finished / "checkpoints" / "best.pt", "data.test_fraction=0", "data.batch_size=7", "--json") == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["split"] == "val"
    assert scored["metrics"] == pytest.approx({key: summary[key] for key in ("val/loss", "val/accuracy")}, rel=1e-5)
    assert evaluate(finished) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["metric", "value"] and out[2].split()[0] == "test/loss"
    assert files(finished) == before


@pytest.mark.parametrize("args, says", [
    (["{run}/nope"], "no such run folder or checkpoint file"),
    (["{tmp}"], "holds no checkpoint"),
    (["{run}", "data.nokey=1"], "data.nokey is not a setting of the run's config"),
    (["{run}", "data=diabetes"], "a group's option"),
    (["{run}", "data.batch_size=0"], "data.batch_size=0"),
    (["{run}", "trainer.resume=auto"], "set by evaluate itself"),
])
def test_bad_input_is_one_line_and_exit_2(finished, tmp_path, capsys, args, says):
    assert evaluate(*(arg.format(run=finished, tmp=tmp_path) for arg in args)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and says in captured.err and captured.err.count("\n") == 1
