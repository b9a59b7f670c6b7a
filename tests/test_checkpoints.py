"""The local checkpoint store: atomic files, the digest manifest, pruning, refusing bad files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import pytest
import torch
import xxhash
from forked_saves import save_in_killed_child

from trainwire.checkpointing.export import load_weights
from trainwire.checkpointing.format import read_checkpoint, verify
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import CheckpointError, ConfigError


def state(i: int) -> dict:
    return {"model": {"w": torch.full((64, 64), float(i))}, "i": i}


def save(store: LocalCheckpointStore, i: int, *names: str) -> None:
    store.save(state(i), list(names), meta={"epoch": i, "batch": 0, "step": 10 * i})


def snapshot(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_save_writes_files_verified_by_the_manifest_and_keeps_the_newest_periodic(tmp_path):
    store = LocalCheckpointStore(tmp_path / "ck", keep_last=2)
    for epoch in range(5):
        save(store, epoch, "last", f"epoch-{epoch:04d}", *(["best"] if epoch == 1 else []))
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names == ["best.pt", "epoch-0003.pt", "epoch-0004.pt", "last.pt", "manifest.json"]
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["best.pt", "epoch-0003.pt", "epoch-0004.pt", "last.pt"]
    assert manifest["pending"] == {}
    for name, entry in manifest["files"].items():
        assert entry["xxh3_128"] == xxhash.xxh3_128((tmp_path / "ck" / name).read_bytes()).hexdigest()
        assert "sha256" not in entry
    assert store.load("last")["i"] == 4 and store.load("best")["i"] == 1 and store.load("epoch-0003")["i"] == 3
    assert store.latest() == "last"


def test_stale_temporaries_are_cleaned_at_start(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep_last=1)
    save(store, 0, "last")
    (tmp_path / ".last.pt.deadbeef.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".manifest.json.cafe.tmp").write_text("{")
    store.start()
    assert sorted(os.listdir(tmp_path)) == [".lock", "last.pt", "manifest.json"]  # the lock stays, unlocked


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_file_is_reported_by_name_and_latest_falls_back(tmp_path, damage):
    store = LocalCheckpointStore(tmp_path, keep_last=3)
    save(store, 0, "last", "epoch-0000")
    save(store, 1, "last", "epoch-0001")
    for name in ("last.pt", "epoch-0001.pt"):  # the two newest, same bytes through a hard link
        path = tmp_path / name
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[: len(data) // 2]
        path.unlink()  # break the hard link so each name is damaged on its own
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or truncated"):
        store.load("last")
    assert store.latest() == "epoch-0000"
    assert store.load(store.latest())["i"] == 0


def test_a_file_without_a_manifest_entry_is_never_used(tmp_path):
    torch.save(state(0), tmp_path / "last.pt")
    store = LocalCheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds last.pt but no manifest.json, so none of them can be verified"):
        store.latest()  # not an empty folder: resume=auto refuses rather than start over it
    with pytest.raises(CheckpointError, match=r"has no manifest.json beside it"):
        read_checkpoint(tmp_path / "last.pt")
    save(store, 1, "best")
    with pytest.raises(CheckpointError, match=r"last\.pt is not in manifest.json"):
        verify(tmp_path / "last.pt")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json is not a valid manifest"):
        store.latest()


class Payload:
    """Unpickling this would create ``marker``: the classic pickle attack, made observable."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    store = LocalCheckpointStore(tmp_path / "ck")
    # The attacker controls the folder, manifest included: only weights_only stands in the way.
    store.save({"model": {}, "evil": Payload(str(marker))}, ["last"], meta={"epoch": 0, "batch": 0, "step": 0})
    verify(tmp_path / "ck" / "last.pt")  # the hash matches: the manifest alone cannot catch this one
    with pytest.raises(CheckpointError, match=r"refused: torch.load\(weights_only=True\) refused it: .*Unsupported global"):
        store.load("last")
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "ck" / "last.pt", torch.nn.Linear(2, 2))
    assert not marker.exists()
    # The payload is real: an unrestricted load would have created the file.
    torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert marker.exists()


def test_load_weights_for_fine_tuning_takes_only_the_model_and_optimizer(tmp_path):
    source = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(source.parameters(), lr=0.1)
    source(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    store = LocalCheckpointStore(tmp_path)
    store.save({"model": source.state_dict(), "optimizer": optimizer.state_dict()}, ["last"],
               meta={"epoch": 1, "batch": 0, "step": 1})
    target = torch.nn.Linear(3, 2)
    target_optimizer = torch.optim.AdamW(target.parameters(), lr=0.1)
    load_weights(tmp_path / "last.pt", target, target_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), target.parameters()))
    assert target_optimizer.state_dict()["state"][0]["step"] == 1


def test_saving_into_a_path_that_is_a_file_names_it_and_changes_nothing(tmp_path):
    blocker = tmp_path / "ck"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*ck/last\.pt"):
        save(LocalCheckpointStore(blocker), 0, "last")
    assert blocker.read_text() == "not a folder"


def test_a_save_failing_after_the_data_is_written_leaves_the_previous_checkpoint_byte_for_byte(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep_last=2)
    save(store, 0, "last", "epoch-0000")
    before = snapshot(tmp_path)
    # A folder squats on last.pt: the data is written and recorded as pending, then the
    # rename onto last.pt fails, the step before the commit.
    (tmp_path / "last.pt").unlink()
    (tmp_path / "last.pt").mkdir()
    (tmp_path / "last.pt" / "keep").write_text("x")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.pt"):
        save(store, 1, "last")
    (tmp_path / "last.pt" / "keep").unlink()
    (tmp_path / "last.pt").rmdir()
    after = snapshot(tmp_path)
    assert after["epoch-0000.pt"] == before["epoch-0000.pt"]
    assert store.latest() == "epoch-0000" and store.load("epoch-0000")["i"] == 0
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def _as_unprivileged(action) -> str:
    """Runs ``action`` where file permissions apply (root ignores them: drop to nobody in a fork)."""
    if os.geteuid() != 0:
        try:
            action()
        except CheckpointError as error:
            return str(error)
        return ""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                action()
            except CheckpointError as error:
                os.write(write, str(error).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as handle:
        message = handle.read()
    assert os.waitpid(pid, 0)[1] == 0
    return message


def test_a_read_only_folder_is_a_clear_error_and_the_previous_checkpoint_is_unchanged():
    root = tempfile.mkdtemp(prefix="trainwire-ro-")  # outside pytest's 0700 tmp, so nobody may enter it
    try:
        os.chmod(root, 0o755)
        folder = os.path.join(root, "ck")
        store = LocalCheckpointStore(folder)
        save(store, 0, "last")
        before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
        os.chmod(folder, 0o555)
        message = _as_unprivileged(lambda: save(store, 1, "last", "best"))
        os.chmod(folder, 0o755)
        assert "could not write checkpoint" in message and "ck/last.pt" in message and "Permission denied" in message
        after = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
        assert after == before
    finally:
        os.chmod(root, 0o755)
        import shutil

        shutil.rmtree(root)


def test_keep_last_must_be_positive():
    with pytest.raises(ConfigError, match=r"store.keep_last=0 must be an integer >= 1"):
        LocalCheckpointStore("x", keep_last=0)


def save_killed_at(directory, i: int, names: list[str], point: str, keep_last: int = 2) -> bool:
    """Saves checkpoint ``i`` in a child killed on reaching ``point``; True when the save returned."""
    return save_in_killed_child(directory, lambda store: save(store, i, *names),
                                lambda reached, _: reached == point, keep_last)


def test_a_save_cut_short_after_its_rename_still_loads_when_the_next_save_is_cut_short_before_its_rename(tmp_path):
    # The flake of test_kill: a save killed after its rename left its entries under pending;
    # the next save replaced pending with its own and was killed before its rename, so last.pt
    # and epoch-0002.pt matched nothing any more and latest() fell back to checkpoint 1.
    store = LocalCheckpointStore(tmp_path, keep_last=2)
    save(store, 0, "last", "epoch-0000")
    save(store, 1, "last", "epoch-0001")
    assert not save_killed_at(tmp_path, 2, ["last", "epoch-0002"], "renamed")  # renamed, not yet committed
    store.start()
    assert store.load(store.latest())["i"] == 2  # not acknowledged, but newer: allowed, and now resumed from
    assert not save_killed_at(tmp_path, 3, ["last", "epoch-0003"], "pending")  # hashes recorded, nothing renamed
    store.start()
    assert store.load(store.latest())["i"] == 2
    assert store.load("last")["i"] == 2 and store.load("epoch-0002")["i"] == 2 and store.load("epoch-0001")["i"] == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"]["last.pt"]["epoch"] == 2 and "epoch-0002.pt" in manifest["files"]  # committed by save 3
    assert sorted(manifest["pending"]) == ["epoch-0003.pt", "last.pt"]
    assert save_killed_at(tmp_path, 4, ["last", "epoch-0004"], "never")  # a whole save settles the rest
    assert store.load(store.latest())["i"] == 4
    assert sorted(os.listdir(tmp_path)) == [".lock", "epoch-0002.pt", "epoch-0004.pt", "last.pt", "manifest.json"]


def test_latest_orders_a_file_by_the_entry_its_bytes_match(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep_last=2)
    save(store, 0, "last", "epoch-0000")
    save(store, 1, "last", "best")
    # Cut short after best.pt was renamed, before last.pt was: best.pt holds checkpoint 2 (pending),
    # last.pt still holds 1 (committed).
    assert not save_killed_at(tmp_path, 2, ["best", "last"], "renamed best.pt")
    store.start()
    assert store.latest() == "best" and store.load("best")["i"] == 2 and store.load("last")["i"] == 1


def test_a_pending_entry_whose_file_was_never_renamed_is_dropped_by_the_next_save(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep_last=2)
    save(store, 0, "last")
    assert not save_killed_at(tmp_path, 1, ["last"], "pending")
    store.start()
    assert store.load(store.latest())["i"] == 0
    save(store, 2, "best")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"]["last.pt"]["epoch"] == 0 and manifest["pending"] == {}
    assert store.load("last")["i"] == 0 and store.latest() == "best"


def test_a_first_save_killed_before_its_rename_leaves_a_folder_that_resumes_from_scratch(tmp_path):
    # The flake of test_kill[2]: killed at step 2 while the first checkpoint was being written,
    # so the manifest lists last.pt as pending and no file ever landed. That is no damage: nothing
    # was saved, and resume=auto starts over instead of refusing the folder.
    assert not save_killed_at(tmp_path, 0, ["last"], "pending")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"] == {} and sorted(manifest["pending"]) == ["last.pt"]
    store = LocalCheckpointStore(tmp_path, keep_last=2)
    store.start()
    assert store.latest() is None
    save(store, 1, "last")
    assert store.load(store.latest())["i"] == 1


def _damage(folder, how: str) -> None:
    if how == "no manifest":
        (folder / "manifest.json").unlink()
    elif how == "every digest wrong":
        manifest = json.loads((folder / "manifest.json").read_text())
        for entry in manifest["files"].values():
            entry["xxh3_128"] = "0" * 32
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:  # every file truncated
        for path in folder.glob("*.pt"):
            data = path.read_bytes()
            path.unlink()  # hard links: damage each name on its own
            path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("how", "says"), [
    ("no manifest", "holds best.pt, epoch-0000.pt, epoch-0001.pt, last.pt but no manifest.json"),
    ("every digest wrong", "(last.pt corrupt or truncated: its digest does not match manifest.json; epoch-0001.pt"),
    ("every file truncated", "best.pt corrupt or truncated"),
])
def test_a_folder_with_checkpoints_none_of_which_verifies_is_refused_not_taken_for_empty(tmp_path, how, says):
    """Before: latest() returned None, and trainer.resume=auto started from scratch over the folder."""
    store = LocalCheckpointStore(tmp_path)
    save(store, 0, "last", "epoch-0000", "best")
    save(store, 1, "last", "epoch-0001")
    store.close()
    _damage(tmp_path, how)
    before = snapshot(tmp_path)
    store = LocalCheckpointStore(tmp_path)
    store.start()
    with pytest.raises(CheckpointError) as refused:
        store.latest()
    message = str(refused.value)
    assert str(tmp_path) in message and says in message and "\n" not in message
    assert "nothing in it was changed. To train from scratch, move the folder away" in message
    assert {k: v for k, v in snapshot(tmp_path).items() if k != ".lock"} == before  # not a byte touched


def test_an_empty_or_new_folder_is_a_fresh_start(tmp_path):
    assert LocalCheckpointStore(tmp_path / "new").latest() is None
    store = LocalCheckpointStore(tmp_path / "ck")
    store.start()  # the folder and its lock, nothing else
    assert store.latest() is None


def test_every_high_bit_flip_of_the_manifest_is_a_checkpoint_error(tmp_path):
    """Before: a byte >= 0x80 in manifest.json escaped as a UnicodeDecodeError traceback."""
    store = LocalCheckpointStore(tmp_path)
    save(store, 0, "last", "epoch-0000")
    original = (tmp_path / "manifest.json").read_bytes()
    for index in range(len(original)):
        flipped = bytearray(original)
        flipped[index] ^= 0x80
        (tmp_path / "manifest.json").write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match=r"manifest.json is not a valid manifest \(UnicodeDecodeError at byte"):
            store.latest()
        with pytest.raises(CheckpointError):
            store.load("last")


def test_an_orphan_left_by_a_prune_cut_short_is_removed_by_the_next_save(tmp_path):
    """Before: a periodic file dropped from the manifest but not deleted stayed forever."""
    store = LocalCheckpointStore(tmp_path, keep_last=1)
    save(store, 0, "last", "epoch-0000")
    assert not save_in_killed_child(tmp_path, lambda child: save(child, 1, "last", "epoch-0001"),
                                    lambda point, _: point == "committed", keep_last=1)
    assert (tmp_path / "epoch-0000.pt").exists()  # committed out of the manifest, never deleted
    save(store, 2, "last")
    assert not (tmp_path / "epoch-0000.pt").exists()
    assert store.load("epoch-0001")["i"] == 1


def test_a_damaged_older_checkpoint_is_reported_at_resume_and_forgotten_by_the_next_save(tmp_path):
    """Before: it stayed listed in the manifest, unreported, after a successful resumed run."""
    from trainwire.testing import capture_logs

    store = LocalCheckpointStore(tmp_path, keep_last=3)
    save(store, 0, "last", "epoch-0000")
    save(store, 1, "last", "epoch-0001")
    data = (tmp_path / "epoch-0000.pt").read_bytes()
    (tmp_path / "epoch-0000.pt").write_bytes(data[:100])
    with capture_logs() as logs:
        assert store.latest() == "last"
        save(store, 2, "last", "epoch-0002")
    assert [(entry["event"], entry["file"]) for entry in logs] == [
        ("checkpoint_rejected", str(tmp_path / "epoch-0000.pt")), ("checkpoint_forgotten", str(tmp_path / "epoch-0000.pt"))]
    assert "100 bytes where manifest.json lists" in logs[0]["reason"]
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["files"]) == [
        "epoch-0001.pt", "epoch-0002.pt", "last.pt"]
    assert not (tmp_path / "epoch-0000.pt").exists()


def test_a_raw_pickle_refusal_keeps_its_reason(tmp_path):
    """Before: the message ended in 'WeightsUnpickler error:' and the reason was lost."""
    import pickle

    store = LocalCheckpointStore(tmp_path)
    save(store, 0, "last")
    (tmp_path / "last.pt").unlink()
    (tmp_path / "last.pt").write_bytes(pickle.dumps({"x": Payload(str(tmp_path / "pwned"))}, protocol=4))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["last.pt"]["xxh3_128"] = xxhash.xxh3_128((tmp_path / "last.pt").read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as refused:
        store.load("last")
    assert str(refused.value).endswith("was refused: it is not a torch.save archive (a raw pickle, or another "
                                       "format), so it is not unpickled")
    assert not (tmp_path / "pwned").exists()


LOCK_HOLDER = """
import os, sys, time
from trainwire.checkpointing.store import LocalCheckpointStore
store = LocalCheckpointStore(sys.argv[1])
store.start()
if sys.argv[2] == "workers":  # a DataLoader's workers, forked while the lock is held, outlive their parent
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=2)
    batches = iter(loader)
    next(batches)
    print(" ".join(str(worker.pid) for worker in batches._workers), flush=True)
    time.sleep(1)  # the workers have queued their prefetched batches and wait for indices, as mid-run
    os.kill(os.getpid(), 9)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_process_on_a_locked_folder_is_refused_with_one_line(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path), "sleep"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(CheckpointError) as refused:
            LocalCheckpointStore(tmp_path).start()
        assert str(refused.value) == (f"{tmp_path} is in use by process {holder.pid} (it holds {tmp_path / '.lock'}); "
                                      "wait for it to end, or train in another run folder")
    finally:
        holder.kill()
        holder.wait()
    LocalCheckpointStore(tmp_path).start()  # kill -9 freed it


def reopen_after_a_killed_run_left_workers(folder) -> None:
    """kill -9 of the holder leaves its forked workers, holding the lock; the next store waits them out."""
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder), "workers"], stdout=subprocess.PIPE,
                              text=True)
    workers = [int(pid) for pid in holder.stdout.readline().split()]
    holder.wait()
    assert holder.returncode == -9 and len(workers) == 2

    def alive() -> list[int]:
        return [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
                open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"]

    assert alive(), "no worker outlived its parent: nothing to wait for"
    started = time.monotonic()
    LocalCheckpointStore(folder).start()
    assert not alive(), "the store opened the folder while a worker of the killed run still lived"
    assert time.monotonic() - started < 60  # the workers notice their parent is gone (5 s polls; slower when loaded)


@pytest.mark.slow
def test_a_folder_is_not_reopened_while_dataloader_workers_of_a_killed_run_live(tmp_path):
    reopen_after_a_killed_run_left_workers(tmp_path)


@pytest.mark.parametrize(("damage", "words"), [
    ("deep", "nested deeper than a manifest ever is"),
    ("epoch as a word", "files['last.pt'].epoch is 'seven', not a count"),
    ("entry not a table", "files['last.pt'] is 3, not a table"),
    ("link to /dev/zero", "it is a symbolic link; a manifest must be a plain file"),
    ("too large", "more than a manifest ever is"),
])
def test_a_hostile_manifest_is_one_line_and_the_folder_is_unchanged(tmp_path, damage, words):
    """Before: a RecursionError or TypeError traceback, or an unbounded read of /dev/zero."""
    import trainwire.checkpointing.format as format_module

    store = LocalCheckpointStore(tmp_path)
    store.start()
    save(store, 1, "last")
    manifest = tmp_path / "manifest.json"
    entries = json.loads(manifest.read_text())
    if damage == "deep":
        manifest.write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif damage == "epoch as a word":
        entries["files"]["last.pt"]["epoch"] = "seven"
        manifest.write_text(json.dumps(entries))
    elif damage == "entry not a table":
        entries["files"]["last.pt"] = 3
        manifest.write_text(json.dumps(entries))
    elif damage == "link to /dev/zero":
        manifest.unlink()
        manifest.symlink_to("/dev/zero")
    else:
        manifest.write_text(json.dumps({**entries, "padding": "x" * (format_module.MAX_MANIFEST_BYTES + 1)}))
    before = {path.name: (path.read_bytes() if not path.is_symlink() else os.readlink(path)) for path in tmp_path.iterdir()}
    with pytest.raises(CheckpointError) as refused:
        LocalCheckpointStore(tmp_path).latest()
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert {path.name: (path.read_bytes() if not path.is_symlink() else os.readlink(path))
            for path in tmp_path.iterdir()} == before


def test_a_flipped_byte_torch_load_skips_is_still_refused_and_the_manifest_is_the_file_s_digest(tmp_path):
    """The hash is taken of the bytes torch.load reads as it loads (one read): a byte it never looks at,
    in a record's header padding, must still be covered, and the save's digest is the file's."""
    import zipfile

    store = LocalCheckpointStore(tmp_path)
    save(store, 3, "last")
    path = tmp_path / "last.pt"
    data = bytearray(path.read_bytes())
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"]["last.pt"]
    assert entry["xxh3_128"] == xxhash.xxh3_128(data).hexdigest() and entry["size"] == len(data)
    with zipfile.ZipFile(path) as archive:  # the padding torch puts before a tensor's bytes (its extra field)
        info = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    name_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    assert extra_length > 4
    data[info.header_offset + 30 + name_length + extra_length - 1] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["i"] == 3  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or truncated"):
        store.load("last")


def test_a_folder_an_older_version_wrote_with_sha256_still_verifies_and_takes_new_saves(tmp_path):
    """Manifests written before ADR 0037 list sha256 digests: they verify as they are, a damaged file is still
    refused, and a new save beside them writes xxh3_128 for its own file and leaves the others' entries alone."""
    store = LocalCheckpointStore(tmp_path)
    save(store, 1, "last", "best")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():  # as the older version wrote it
        del entry["xxh3_128"]
        entry["sha256"] = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = LocalCheckpointStore(tmp_path)
    assert store.latest() == "last" and store.load("last")["i"] == 1
    assert verify(tmp_path / "best.pt")["sha256"] == manifest["files"]["best.pt"]["sha256"]
    save(store, 2, "last")
    after = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert set(after["last.pt"]) >= {"xxh3_128", "size"} and "sha256" not in after["last.pt"]
    assert after["best.pt"] == manifest["files"]["best.pt"]
    assert store.load("last")["i"] == 2 and store.load("best")["i"] == 1
    data = bytearray((tmp_path / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "best.pt").unlink()
    (tmp_path / "best.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="best.pt is corrupt or truncated: its digest does not match"):
        store.load("best")
