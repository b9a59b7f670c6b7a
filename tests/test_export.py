"""`trainwire export-weights`: the best weights out of a run, as torch or safetensors, never into its checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch

from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.cli.main import main


def weights(i: int) -> dict[str, torch.Tensor]:
    shared = torch.full((4, 4), float(i))
    return {"embed.weight": shared, "head.weight": shared, "head.bias": torch.full((4,), float(i))}  # tied


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as a run leaves it: its record, and checkpoints with best.pt (epoch 1) behind last.pt (epoch 3)."""
    run = tmp_path / "run"
    store = LocalCheckpointStore(run / "checkpoints")
    for epoch in range(4):
        store.save({"model": weights(epoch)}, ["last", *(["best"] if epoch == 1 else [])],
                   meta={"epoch": epoch + 1, "batch": 0, "step": 10 * (epoch + 1)})
    (run / "metrics.jsonl").write_text("")
    return run


def export(*args: str) -> int:
    """``trainwire export-weights *args`` in this process; its exit status."""
    try:
        main(["export-weights", *map(str, args)])
    except SystemExit as exit_:
        return exit_.code
    return 0


def snapshot(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_run_folder_ships_its_best_weights_and_says_so(run_dir, tmp_path, capsys):
    assert export(run_dir, "-o", tmp_path / "model.pt") == 0
    assert torch.load(tmp_path / "model.pt", weights_only=True)["head.bias"][0] == 1  # best.pt's epoch, not last.pt's
    assert "best.pt: the run's best weights" in capsys.readouterr().out
    assert export(run_dir / "checkpoints" / "last.pt", "-o", tmp_path / "last.pt") == 0  # a file: that file
    assert torch.load(tmp_path / "last.pt", weights_only=True)["head.bias"][0] == 3
    store = LocalCheckpointStore(tmp_path / "plain" / "checkpoints")  # a run that never validated keeps no best.pt
    store.save({"model": weights(7)}, ["last"], meta={"epoch": 1, "batch": 0, "step": 1})
    assert export(tmp_path / "plain", "-o", tmp_path / "plain.pt") == 0
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["head.bias"][0] == 7
    assert "last.pt: its newest checkpoint, as the run kept no best.pt" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["checkpoints/last.pt", "checkpoints/new.pt", "checkpoints", "link/last.pt",
                                    "link/deeper/x.pt"])
def test_nothing_is_written_inside_a_checkpoint_folder(run_dir, tmp_path, capsys, target):
    (tmp_path / "link").symlink_to(run_dir / "checkpoints")  # a symlink is followed to where it leads
    before = snapshot(run_dir / "checkpoints")
    assert export(run_dir, "-o", tmp_path / target if target.startswith("link") else run_dir / target) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trainwire: error: export-weights -o ")
    assert f"inside the checkpoint folder {(run_dir / 'checkpoints').resolve()}" in err
    assert snapshot(run_dir / "checkpoints") == before and not list(tmp_path.glob("**/*.tmp"))  # nothing written


def test_safetensors_out_by_flag_or_by_name(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    assert export(run_dir, "--format", "safetensors", "-o", tmp_path / "a.st") == 0
    assert export(run_dir, "-o", tmp_path / "b.safetensors") == 0  # the name says it
    expected = weights(1)
    for name in ("a.st", "b.safetensors"):
        loaded = load_file(tmp_path / name)
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert "safetensors, from" in capsys.readouterr().out
    assert export(run_dir, "--format=onnx", "-o", tmp_path / "c.onnx") == 2
    assert capsys.readouterr().err == "trainwire: error: export-weights --format='onnx': one of torch, safetensors\n"


def test_safetensors_not_installed_is_one_line_naming_the_install(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert export(run_dir, "--format", "safetensors", "-o", tmp_path / "m.safetensors") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(pip install safetensors)" in err and not (tmp_path / "m.safetensors").exists()
