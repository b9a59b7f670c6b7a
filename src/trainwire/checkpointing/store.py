"""Checkpoint stores: where training state is saved and how it is found again.

``LocalCheckpointStore`` keeps ``last.pt``, ``best.pt`` and ``epoch-XXXX.pt`` in one folder
with a ``manifest.json`` that holds each file's sha256. The manifest is the commit marker:
a file is used only when its bytes hash to what the manifest says, so a file that is
half-written, truncated, flipped or foreign is never loaded. Every file is written under a
temporary name in the same folder, fsynced, renamed, and the folder fsynced (ADR 0009).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainwire.checkpointing import sharding
from trainwire.checkpointing.lock import FolderLock
from trainwire.errors import CheckpointError, ConfigError
from trainwire.runtime import logs

MANIFEST = "manifest.json"
FORMAT = 1
# How a refusal to resume from a damaged folder ends: what was not done, and the explicit way to start afresh.
_UNTOUCHED = ("nothing in it was changed. To train from scratch, move the folder away or train in a new run folder "
              "(hydra.run.dir=...); to resume from one checkpoint of it, name its path in trainer.resume")
_NAME = re.compile(r"^(last|best|epoch-\d{4,})$")
_PERIODIC = re.compile(r"^epoch-\d{4,}\.pt$")


class CheckpointStore(ABC):
    """Port: saves the Trainer's state and gives it back, never half of it."""

    def start(self) -> None:
        """Called once at the start of fit, before any load or save; may clean what a crash left."""

    @abstractmethod
    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> None:
        """Stores ``state`` under each of ``names`` (``last``, ``best``, ``epoch-0004``); returns only once durable.

        ``meta`` (epoch, batch, step) orders checkpoints. Raises CheckpointError naming the path;
        on failure every checkpoint saved before is left as it was.
        """

    @abstractmethod
    def latest(self) -> str | None:
        """The name of the newest checkpoint that verifies, or None when there is none.

        Raises CheckpointError when checkpoints are there but none verifies: a damaged store
        is never taken for an empty one.
        """

    @abstractmethod
    def load(self, name: str) -> dict[str, Any]:
        """The state saved under ``name`` (or at a path); raises CheckpointError before returning anything unverified."""


_CHUNK = 1 << 20  # bytes read per call when hashing a file
_BIG = 1 << 20  # a write at least this long is hashed on the helper thread while it goes to disk
_BATCH = 1 << 20  # torch.save's small writes (headers, small tensors) are gathered up to this


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


class _Hasher:
    """A sha256 fed in order by one helper thread, so hashing overlaps the caller's I/O or parsing.

    hashlib drops the GIL while it hashes a long buffer, so the two really run at once. The
    caller must keep every submitted buffer alive and unchanged until ``wait`` returns.
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._done = threading.Semaphore(0)
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="trainwire-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (view := self._queue.get()) is not None:
            self.digest.update(view)
            self._done.release()

    def submit(self, view: memoryview) -> None:
        self._pending += 1
        self._queue.put(view)

    def wait(self) -> None:
        """Returns once everything submitted is hashed; then ``digest`` may be used from this thread too."""
        while self._pending:
            self._done.acquire()
            self._pending -= 1

    def close(self) -> str:
        self.wait()
        self._queue.put(None)
        self._thread.join()
        return self.digest.hexdigest()


class _HashingWriter:
    """The file object ``torch.save`` writes to: bytes go to ``fd`` and into a sha256 as they pass.

    So the file is never read back to hash it. A long write (a tensor's storage) is hashed on
    the helper thread while it is written; short ones are gathered and written in batches.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.hasher = _Hasher()
        self._batch = bytearray()

    def write(self, data) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        count = len(view)
        if count >= _BIG:
            self._write_batch()
            self.hasher.submit(view)  # torch may reuse this buffer after write returns: wait below
            try:
                self._write_all(view)
            finally:
                self.hasher.wait()
        else:
            self.hasher.digest.update(view)  # the helper is idle between long writes
            self._batch += view
            if len(self._batch) >= _BATCH:
                self._write_batch()
        self.size += count
        return count

    def flush(self) -> None:
        self._write_batch()

    def _write_batch(self) -> None:
        if self._batch:
            self._write_all(memoryview(self._batch))
            self._batch = bytearray()

    def _write_all(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> str:
        """Flushes what is gathered and returns the sha256 of everything written."""
        self._write_batch()
        return self.hasher.close()


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the folder's entry is: without this a power cut can
    # bring back the old name (or none) after rename returned.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_into(source: Path, handle) -> None:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``; None when there is none; CheckpointError when it is unreadable."""
    path = Path(directory) / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    try:
        manifest = json.loads(data.decode("utf-8"))  # a flipped high bit is a UnicodeDecodeError, a ValueError
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.setdefault("pending", {}), dict):
            raise ValueError("no 'files' table")
    except (ValueError, AttributeError) as error:
        reason = f"{type(error).__name__} at byte {error.start}" if isinstance(error, UnicodeDecodeError) else error
        raise CheckpointError(f"{path} is not a valid manifest ({reason}); no checkpoint in it is used") from None
    return manifest


def _entries(path: Path) -> list[dict[str, Any]]:
    """The manifest entries (committed, then pending) that the file at ``path`` may match."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest = read_manifest(path.parent)
    if manifest is None:
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST} beside it; an unverified file is never used")
    # A save records the new hash as pending before its rename and commits it after, so a
    # crash between the two leaves a file that either the pending or the committed hash matches.
    entries = [e for e in (manifest["files"].get(path.name), manifest["pending"].get(path.name)) if e]
    if not entries:
        raise CheckpointError(f"checkpoint {path} is not in {MANIFEST}; an unverified file is never used")
    return entries


def _match(path: Path, entries: Sequence[Mapping[str, Any]], digest: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("sha256") == digest:
            problem = _shards_problem(path.parent, entry)
            if problem:
                raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
            return dict(entry)
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its sha256 does not match {MANIFEST}")


def _shards_problem(directory: Path, entry: Mapping[str, Any]) -> str | None:
    """Why the shard files ``entry`` lists do not verify (missing, or another sha256); None when they all do."""
    for name, digest in (entry.get("shards") or {}).items():
        path = directory / name
        try:
            if _sha256(path) != digest:
                return f"its shard {path} does not match {MANIFEST}"
        except OSError:
            return f"its shard {path} is missing"
    return None


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest entry of the checkpoint at ``path`` when its bytes match it; CheckpointError otherwise."""
    path = Path(path)
    entries = _entries(path)
    return _match(path, entries, _sha256(path))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verifies the checkpoint at ``path`` against its manifest, then loads it with ``weights_only=True``.

    Only tensors and plain containers load: a file that carries any other pickled object is
    refused before that object is built, so a malicious payload never runs.
    """
    path = Path(path)
    entries = _entries(path)
    # A helper thread hashes the file while torch.load parses it (hashlib and file reads release
    # the GIL), so with a free core the check costs little time. Nothing is returned, and no
    # verdict of the parse is given, before the digest matches the manifest: a file that does not
    # match is reported as corrupt whatever the parse made of it.
    hashed: dict[str, Any] = {}

    def hash_file() -> None:
        try:
            hashed["digest"] = _sha256(path)
        except OSError as error:
            hashed["error"] = error

    hashing = threading.Thread(target=hash_file, name="trainwire-sha256", daemon=True)
    hashing.start()
    state: Any = None
    failure: Exception | None = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses with UnpicklingError; a bad archive raises others
        failure = error
    finally:
        hashing.join()
    if "error" in hashed:
        error = hashed["error"]
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    _match(path, entries, hashed["digest"])
    if failure is not None:
        raise CheckpointError(f"checkpoint {path} was refused by torch.load(weights_only=True): "
                              f"{refusal_reason(failure)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of state")
    sharded = state.pop("sharded", None)
    if isinstance(sharded, dict):  # FSDP's parts: their tensors are in the shard folder, verified above
        for key in sharded["parts"]:
            state[key] = sharding.ShardedState(path.parent / sharded["folder"], state[key])
    return state


def refusal_reason(error: BaseException) -> str:
    """The line of a ``torch.load(weights_only=True)`` failure that says why, without torch's advice around it.

    torch puts the reason after a line ending in ``WeightsUnpickler error:`` (a raw pickle) or
    alone between its preamble and "Check the documentation" (a disallowed global).
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        marker = line.find("WeightsUnpickler error:")
        if marker >= 0:
            rest = line[marker + len("WeightsUnpickler error:"):].strip()
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return f"WeightsUnpickler error: {rest or following}".rstrip(": ")
    told = [line for line in lines[1:] if not line.startswith("Check the documentation")]
    if lines and lines[0].startswith("Weights only load failed") and told:
        return " ".join(told)
    return lines[0] if lines else type(error).__name__


def load_weights(path: str | os.PathLike[str], model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, Any]:
    """Loads only the model's weights (and the optimizer's state, when given) from a verified checkpoint.

    For fine-tuning from someone else's run: nothing else of theirs (schedule, RNG, position)
    is applied. Returns the whole checkpoint for inspection.
    """
    state = read_checkpoint(path)
    missing = [key for key in ("model", "optimizer") if key not in state and (key == "model" or optimizer)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {' or '.join(missing)} state")
    if isinstance(state["model"], sharding.ShardedState):  # FSDP's shards, read whole (or resharded) into model
        state["model"].load_model(model)
        if optimizer is not None:
            state["optimizer"].load_optimizer(model, optimizer)
        return state
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def export_weights(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Writes the model's weights of a checkpoint to ``out`` as a plain state dict (``torch.save``), for inference.

    ``source`` is a run folder (its newest valid checkpoint), a checkpoint folder, or a checkpoint
    file; single-file and sharded (FSDP) checkpoints alike, read whole without a process group.
    Returns the checkpoint's path and the weights. ``out`` is written atomically.
    """
    source = Path(source)
    if source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        name = LocalCheckpointStore(folder).latest()
        if name is None:
            raise CheckpointError(f"{source} holds no checkpoint")
        source = folder / f"{name}.pt"
    state = read_checkpoint(source)
    if "model" not in state:
        raise CheckpointError(f"checkpoint {source} has no model state")
    weights = state["model"]
    if isinstance(weights, sharding.ShardedState):
        weights = weights.consolidate()
    out = Path(out)
    staged = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_file(staged, lambda handle: torch.save(weights, handle))
        os.replace(staged, out)
    except OSError as error:
        raise CheckpointError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        staged.unlink(missing_ok=True)
    return source, weights


def _writes() -> bool:
    """Whether this process writes the checkpoints: yes, but for ranks other than 0 of a process group.

    Every rank of a data-parallel run shares its run folder and starts the store; only rank 0
    saves, so only rank 0 takes the folder's lock (the others would be refused by it).
    """
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints as files in ``directory``, verified by ``manifest.json``.

    Keeps ``last.pt``, ``best.pt`` and the newest ``keep_last`` periodic ``epoch-XXXX.pt``;
    older periodic files are pruned only after a new one is committed. ``start`` locks the
    folder (``FolderLock``: one run at a time) until ``close`` or the process's end. ``config_yaml``, when
    given, is stored in every checkpoint as the run's resolved config. ``hook`` is for tests:
    it is called with the name of each step a save reaches (``written``, ``pending``,
    ``renamed last.pt``, ...), so that a test can kill the process at exactly that point.
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3, config_yaml: str | None = None, *,
                 hook: Callable[[str], None] | None = None) -> None:
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"trainer.keep_last={keep_last!r} must be an integer >= 1")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.config_yaml = config_yaml
        self.hook = hook
        self.log = logs.get_logger()
        self.lock = FolderLock(self.directory, logger=self.log)
        weakref.finalize(self, self.lock.release)  # a store dropped without close() lets its folder go too
        # Files latest() found damaged (name -> their manifest entry): the next committed save forgets them.
        self._rejected: dict[str, dict[str, Any]] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.pt"

    def _reached(self, point: str) -> None:
        if self.hook is not None:
            self.hook(point)

    def start(self) -> None:
        """Locks the folder (creating it; rank 0 only), then deletes what a save killed mid-write left (``.*.tmp``).

        Raises CheckpointError when another process holds the folder.
        """
        if _writes():
            self.lock.acquire()
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Releases the folder's lock (the process's end does too)."""
        self.lock.release()

    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> None:
        """See ``CheckpointStore.save``. Parts that hold DTensors (FSDP) are written as shards by every rank,
        which must all call this; the rest, and the commit, by rank 0 (ADR 0014)."""
        bad = [name for name in names if not _NAME.match(name)]
        if bad or not names:
            raise ValueError(f"checkpoint names must be last, best or epoch-NNNN; got {list(names)}")
        payload = {**state, "config_yaml": self.config_yaml}
        sharded = [key for key, value in state.items() if sharding.holds_dtensors(value)]
        if sharded:
            self._save_sharded(payload, sharded, names, meta)
        else:
            self._commit(payload, names, meta)

    def _save_sharded(self, payload: dict[str, Any], sharded: list[str], names: Sequence[str],
                      meta: Mapping[str, int]) -> None:
        """Every rank writes its shards and hashes them; rank 0 commits them with the small file, then tells all."""
        import torch.distributed as dist

        from trainwire.runtime.distributed import broadcast_object

        rank = dist.get_rank() if dist.is_initialized() else 0
        folder = self.directory / broadcast_object(f"shards-{uuid.uuid4().hex[:12]}") if dist.is_initialized() \
            else self.directory / f"shards-{uuid.uuid4().hex[:12]}"
        tensors: dict[str, Any] = {}
        for key in sharded:
            payload[key], found = sharding.split(payload[key], key)
            tensors.update(found)
        payload["sharded"] = {"folder": folder.name, "parts": sharded}
        hashed: dict[str, str] | str
        try:
            sharding.write(tensors, folder)
            hashed = {f"{folder.name}/{path.name}": _sha256(path) for path in sorted(folder.glob(f"__{rank}_*.distcp"))}
        except Exception as error:  # noqa: BLE001 - DCP wraps a rank's OSError in its CheckpointException
            hashed = f"could not write checkpoint shards into {folder}: {error}".splitlines()[0]
        everyone: list[Any] = [hashed]
        if dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, hashed)
        verdict = None
        if rank == 0:
            failed = [item for item in everyone if isinstance(item, str)]
            try:
                if failed:
                    raise CheckpointError(failed[0])
                shards = {name: digest for item in everyone for name, digest in item.items()}
                shards[f"{folder.name}/.metadata"] = _sha256(folder / ".metadata")
                _fsync_dir(folder)
                self._commit(payload, names, meta, shards=shards)
            except OSError as error:
                verdict = f"could not write checkpoint shards into {folder}: {error.strerror or error}"
            except CheckpointError as error:
                verdict = str(error)
        if dist.is_initialized():
            verdict = broadcast_object(verdict)  # every rank returns once rank 0 committed, or raises what it met
        if verdict is not None:
            raise CheckpointError(verdict)

    def _commit(self, payload: Mapping[str, Any], names: Sequence[str], meta: Mapping[str, int], *,
                shards: Mapping[str, str] | None = None) -> None:
        """Writes the file of ``payload`` under ``names`` and commits it (with ``shards``' hashes) in the manifest."""
        target = self.path(names[0])
        token = uuid.uuid4().hex[:8]
        staged = [self.directory / f".{name}.pt.{token}.tmp" for name in names]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest = read_manifest(self.directory) or {"format": FORMAT, "files": {}, "pending": {}}
            self._settle(manifest)
            entry = {**self._write_data(staged[0], payload), **meta, **({"shards": dict(shards)} if shards else {})}
            for extra in staged[1:]:  # one write, several names: a hard link shares the fsynced bytes
                try:
                    os.link(staged[0], extra)
                except OSError:
                    _write_file(extra, lambda handle: _copy_into(staged[0], handle))
            self._reached("written")
            manifest["pending"] = {f"{name}.pt": entry for name in names}
            self._write_manifest(manifest)
            _fsync_dir(self.directory)  # the new hashes are durable before any name changes its bytes
            self._reached("pending")
            for name, path in zip(names, staged):
                os.replace(path, self.path(name))
                self._reached(f"renamed {name}.pt")
            _fsync_dir(self.directory)  # durable from here: each name verifies through its pending entry
            self._reached("renamed")
            manifest["files"].update(manifest.pop("pending"))
            manifest["pending"] = {}
            self._forget_rejected(manifest)
            doomed = self._doomed(manifest)
            for name in doomed:  # out of the manifest first: a crash in between leaves an unused file, not a bad entry
                del manifest["files"][name]
            # No folder fsync for this write: should a power cut undo it, the manifest before it
            # (the same entries under pending) comes back, which verifies the same files.
            self._write_manifest(manifest)
            self._reached("committed")
        except OSError as error:
            where = error.filename or target
            raise CheckpointError(f"could not write checkpoint {target}: {error.strerror or error} ({where})") from None
        finally:
            for path in staged:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        # What an earlier prune (or forgetting) failed to delete is pruned now: a periodic file the
        # committed manifest does not list is never loaded, and only takes space.
        orphans = sorted(path.name for path in self.directory.glob("epoch-*.pt")
                         if _PERIODIC.match(path.name) and path.name not in manifest["files"])
        # Shard folders no committed checkpoint names (pruned, replaced, or left by a save cut short).
        kept = {name.split("/", 1)[0] for entry in manifest["files"].values() if isinstance(entry, dict)
                for name in entry.get("shards", {})}
        unused = sorted(path.name for path in self.directory.glob("shards-*") if path.name not in kept)
        try:
            for name in sorted({*doomed, *orphans}):
                (self.directory / name).unlink(missing_ok=True)
                self._reached(f"pruned {name}")
            for name in unused:
                shutil.rmtree(self.directory / name)
                self._reached(f"pruned {name}")
        except OSError as error:  # the new checkpoint is committed; only the old ones are still there
            raise CheckpointError(f"saved {target}, but could not prune old checkpoints in {self.directory}: "
                                  f"{error.strerror or error}") from None

    def _forget_rejected(self, manifest: dict[str, Any]) -> None:
        """Drops from ``manifest`` the entries whose files ``latest()`` found damaged, once a newer save is committed."""
        for name, entry in self._rejected.items():
            if manifest["files"].get(name) == entry:  # not saved again since
                del manifest["files"][name]
                self.log.warning("checkpoint_forgotten", file=str(self.directory / name),
                                 reason="it did not verify; a newer checkpoint is committed")
        self._rejected = {}

    def _write_data(self, path: Path, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Writes ``payload`` to the new file ``path`` with one fsync; its sha256 is taken as the bytes pass."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        writer = _HashingWriter(fd)
        try:
            torch.save(payload, writer)
            digest = writer.close()
            os.fsync(fd)
        finally:
            writer.hasher.close()
            os.close(fd)
        return {"sha256": digest, "size": writer.size}

    def _settle(self, manifest: dict[str, Any]) -> None:
        """Resolves what a save cut short left under ``pending``, before a new save replaces it.

        A pending entry whose file already holds its bytes (the save was cut short after its
        rename) is committed: that checkpoint verified, may have been resumed from, and must not
        stop verifying because a later save is cut short too. Any other pending entry (its file
        still holds the committed bytes, or is missing) is dropped. Costs a hash only after a crash.
        """
        for name, entry in manifest["pending"].items():
            committed = manifest["files"].get(name)
            if not (_NAME.match(name.removesuffix(".pt")) and isinstance(entry, dict)):
                continue
            if isinstance(committed, dict) and committed.get("sha256") == entry.get("sha256"):
                continue
            try:
                digest = _sha256(self.directory / name)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            if digest == entry.get("sha256"):
                manifest["files"][name] = entry
        manifest["pending"] = {}

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        staged = self.directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _write_file(staged, lambda handle: handle.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
            self._reached("manifest staged")
            os.replace(staged, self.directory / MANIFEST)
        finally:
            staged.unlink(missing_ok=True)

    def _doomed(self, manifest: Mapping[str, Any]) -> list[str]:
        """The periodic files beyond the newest ``keep_last``."""
        periodic = sorted((name for name in manifest["files"] if _PERIODIC.match(name)),
                          key=lambda name: int(name[len("epoch-"):-len(".pt")]), reverse=True)
        return periodic[self.keep_last:]

    def latest(self) -> str | None:
        """The newest checkpoint that verifies; None when the folder holds no checkpoint at all.

        Raises CheckpointError when the folder holds checkpoints (files or manifest entries) and
        none of them verifies: a damaged folder is never taken for an empty one, so a resumed
        run never starts from scratch over it. Nothing in the folder is changed.
        """
        if not self.directory.is_dir():
            return None
        manifest = read_manifest(self.directory)
        present = sorted(path.name for path in self.directory.glob("*.pt") if _NAME.match(path.stem))
        if manifest is None:
            if present:
                raise CheckpointError(f"{self.directory} holds {', '.join(present)} but no {MANIFEST}, so none of them "
                                      f"can be verified; {_UNTOUCHED}")
            return None
        # Every entry is a candidate, committed or pending, ordered by its own position: a file
        # renamed into place by a save cut short before its commit counts as what it holds.
        candidates = [(entry, name) for table in ("files", "pending") for name, entry in manifest[table].items()
                      if _NAME.match(name.removesuffix(".pt")) and name.endswith(".pt") and isinstance(entry, dict)]
        # Newest by position; on a tie last.pt first, as it is the one written every time.
        candidates.sort(key=lambda item: (item[0].get("epoch", -1), item[0].get("batch", -1), item[0].get("step", -1),
                                          item[1] == "last.pt"), reverse=True)
        left = {name: sum(1 for _, other in candidates if other == name) for _, name in candidates}
        digests: dict[str, str | None] = {}
        rejected: dict[str, str] = {}
        self._rejected = {}
        for entry, name in candidates:
            path = self.directory / name
            if name not in digests:
                try:
                    digests[name] = _sha256(path) if path.is_file() else None
                except OSError:
                    digests[name] = None
            problem = None
            if digests[name] is not None and digests[name] == entry.get("sha256"):
                problem = _shards_problem(self.directory, entry)
                if problem is None:
                    self._check_sizes(manifest, candidates, found=name)
                    return name[: -len(".pt")]
            left[name] -= 1
            if not left[name]:
                rejected[name] = self._reject(manifest, name, f"incomplete: {problem}" if problem else "missing"
                                              if digests[name] is None else
                                              f"corrupt or truncated: its sha256 does not match {MANIFEST}")
        unlisted = [name for name in present if name not in left]
        reasons = [f"{name} {reason}" for name, reason in rejected.items()]
        reasons += [f"{name} not in {MANIFEST}" for name in unlisted]
        if reasons:
            raise CheckpointError(f"no checkpoint in {self.directory} verifies ({'; '.join(reasons)}); {_UNTOUCHED}")
        return None

    def _reject(self, manifest: Mapping[str, Any], name: str, reason: str) -> str:
        path = self.directory / name
        self.log.warning("checkpoint_rejected", file=str(path), reason=f"checkpoint {path} is {reason}")
        if isinstance(manifest["files"].get(name), dict):
            self._rejected[name] = manifest["files"][name]
        return reason

    def _check_sizes(self, manifest: Mapping[str, Any], candidates, found: str) -> None:
        """Reports the older checkpoints whose size already shows they are damaged (a stat each, no hashing)."""
        sizes: dict[str, set[Any]] = {}
        for entry, name in candidates:
            sizes.setdefault(name, set()).add(entry.get("size"))
        for name, expected in sizes.items():
            if name == found or None in expected:
                continue
            try:
                size = os.stat(self.directory / name).st_size
            except OSError:
                self._reject(manifest, name, "missing")
                continue
            if size not in expected:
                listed = " or ".join(str(value) for value in sorted(expected))
                self._reject(manifest, name, f"damaged: {size} bytes where {MANIFEST} lists {listed}")

    def load(self, name: str) -> dict[str, Any]:
        path = self.path(name) if _NAME.match(name) else Path(name)
        return read_checkpoint(path)
