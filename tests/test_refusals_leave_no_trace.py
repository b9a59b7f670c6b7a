"""A refused run leaves its run folder as it found it: every file, ``.hydra/`` included, byte for byte (ADR 0027).

One real finished run is made with the CLI; each case copies it, damages the copy (or not),
runs the command that must be refused, and compares a snapshot of the whole tree (contents,
and the modification time of every file and folder) before and after, ``checkpoints/.lock``
included: taking the lock writes nothing (its holder is read from ``/proc/locks``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import talk
from conftest import trainwire as cli

pytestmark = pytest.mark.slow

QUICK = ["trainer.max_epochs=1", "lr=constant", "model.hidden=[16]", "progress=never", "data.batch_size=256"]


def trainwire(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return cli("train", f"hydra.run.dir={run_dir}", *QUICK, *overrides, cwd=run_dir.parent, timeout=300)


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file's bytes and every file's and folder's mtime, by relative path."""
    assert (folder / "checkpoints" / ".lock").is_file() or not (folder / "checkpoints").is_dir()
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
            for path in sorted([folder, *folder.rglob("*")])}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A real run of one epoch, finished by the CLI, with its record, its checkpoints and Hydra's record."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = trainwire(run_dir)
    assert done.returncode == 0, done.stderr
    assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= set(os.listdir(run_dir / ".hydra"))
    return run_dir


def _truncate(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt"):  # a run's two names for one file: both are damaged
        path = run_dir / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt"):
        path = run_dir / "checkpoints" / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _delete_the_manifest(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "manifest.json").unlink()


def _garble_the_manifest(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "manifest.json").write_text('{"files": {"last.pt": ')


def _manifest_names_missing_files(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt"):
        (run_dir / "checkpoints" / name).unlink()
    assert "last.pt" in json.loads((run_dir / "checkpoints" / "manifest.json").read_text())["files"]


def _nothing(run_dir: Path) -> None:
    pass


# kind -> (damage, the refused command's overrides, the exit code, words of its one line)
CASES = {
    "truncated last.pt": (_truncate, ["trainer.resume=auto"], 1, "checkpoints"),
    "a flipped byte": (_flip_a_byte, ["trainer.resume=auto"], 1, "checkpoints"),
    "deleted manifest": (_delete_the_manifest, ["trainer.resume=auto"], 1, "but no manifest.json"),
    "garbled manifest": (_garble_the_manifest, ["trainer.resume=auto"], 1, "manifest"),
    "manifest naming missing files": (_manifest_names_missing_files, ["trainer.resume=auto"], 1, "checkpoints"),
    "another model width": (_nothing, ["trainer.resume=auto", "model.hidden=[32]"], 2,
                            "model.hidden: [16] -> [32]"),
    "a wrong resume path": (_nothing, ["trainer.resume={run}/checkpoints/nowhere.pt"], 2, "nowhere.pt': no such"),
    "a folder locked by a live run": ("locked", ["trainer.resume=auto"], 1, "is in use by process"),
}


def test_every_refused_run_exits_with_one_line_and_leaves_the_run_folder_byte_identical(finished, tmp_path):
    from trainwire.checkpointing.lock import FolderLock

    cases, locks = {}, []
    for index, (kind, (damage, overrides, code, words)) in enumerate(CASES.items()):
        run_dir = tmp_path / f"case{index}" / "run"
        shutil.copytree(finished, run_dir, copy_function=shutil.copy2)
        if damage == "locked":  # this test's process is the live run holding the folder
            lock = FolderLock(run_dir / "checkpoints")
            lock.acquire()
            locks.append(lock)
        else:
            damage(run_dir)
        cases[kind] = (run_dir, [arg.format(run=run_dir) for arg in overrides], code, words, snapshot(run_dir))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # the subprocesses' start-up is most of the time
            done = dict(zip(cases, pool.map(lambda case: trainwire(case[0], *case[1]), cases.values())))
    finally:
        for lock in locks:
            lock.release()
    wrong = {}
    for kind, (run_dir, _, code, words, before) in cases.items():
        result = done[kind]
        lines = talk(result.stderr)  # the run's log records (a rejected checkpoint's warning) may come first
        if result.returncode != code or len(lines) != 1 or not lines[0].startswith("trainwire: error: ") \
                or words not in lines[0] or "Traceback" in result.stdout:
            wrong[kind] = (result.returncode, result.stderr[-1500:])
        elif snapshot(run_dir) != before:
            after = snapshot(run_dir)
            wrong[kind] = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    assert not wrong, wrong


def test_a_run_that_goes_on_writes_hydras_record_after_its_checks(finished, tmp_path):
    """The control: a resume that is allowed rewrites .hydra/ (with its own overrides) as Hydra would."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, copy_function=shutil.copy2)
    done = trainwire(run_dir, "trainer.resume=auto", "trainer.log_every_n_steps=3")
    assert done.returncode == 0, done.stderr
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "trainer.log_every_n_steps=3" in overrides and "trainer.resume=auto" in overrides
    assert not list((run_dir / ".hydra").glob(".*.tmp"))
