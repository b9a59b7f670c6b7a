"""Checkpoint stores: where training state is saved and how it is found again.

``CheckpointStore`` is the port; ``LocalCheckpointStore`` keeps ``last.pt``, ``best.pt`` and
``epoch-XXXX.pt`` in one folder, committed through its ``manifest.json`` in the file format of
``format.py`` (write, fsync, rename, then commit the hash: ADR 0009), pruned to the newest
``keep_last`` periodic files, and never taken for empty when damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from trainwire import logs
from trainwire.checkpointing import sharding
from trainwire.checkpointing.format import (
    CHECKPOINT_NAME,
    FORMAT,
    MANIFEST,
    PERIODIC_FILE,
    HashingWriter,
    copy_into,
    entry_digest,
    file_digest,
    file_matches,
    fsync_dir,
    read_checkpoint,
    read_manifest,
    shards_problem,
    write_file,
)
from trainwire.checkpointing.lock import FolderLock
from trainwire.errors import CheckpointError, ConfigError

# How a refusal to resume from a damaged folder ends: what was not done, and the explicit way to start afresh.
_UNTOUCHED = ("nothing in it was changed. To train from scratch, move the folder away or train in a new run folder "
              "(hydra.run.dir=...); to resume from one checkpoint of it, name its path in trainer.resume")


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
            raise ConfigError(f"store.keep_last={keep_last!r} must be an integer >= 1")
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
        bad = [name for name in names if not CHECKPOINT_NAME.match(name)]
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
            hashed = {f"{folder.name}/{path.name}": file_digest(path) for path in sorted(folder.glob(f"__{rank}_*.distcp"))}
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
                shards[f"{folder.name}/.metadata"] = file_digest(folder / ".metadata")
                fsync_dir(folder)
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
                    write_file(extra, lambda handle: copy_into(staged[0], handle))
            self._reached("written")
            manifest["pending"] = {f"{name}.pt": entry for name in names}
            self._write_manifest(manifest)
            fsync_dir(self.directory)  # the new hashes are durable before any name changes its bytes
            self._reached("pending")
            for name, path in zip(names, staged):
                os.replace(path, self.path(name))
                self._reached(f"renamed {name}.pt")
            fsync_dir(self.directory)  # durable from here: each name verifies through its pending entry
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
                         if PERIODIC_FILE.match(path.name) and path.name not in manifest["files"])
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
        """Writes ``payload`` to the new file ``path`` with one fsync; its digest is taken as the bytes pass."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        writer = HashingWriter(fd)
        try:
            torch.save(payload, writer)
            fields = writer.close()
            os.fsync(fd)
        finally:
            os.close(fd)
        return fields

    def _settle(self, manifest: dict[str, Any]) -> None:
        """Resolves what a save cut short left under ``pending``, before a new save replaces it.

        A pending entry whose file already holds its bytes (the save was cut short after its
        rename) is committed: that checkpoint verified, may have been resumed from, and must not
        stop verifying because a later save is cut short too. Any other pending entry (its file
        still holds the committed bytes, or is missing) is dropped. Costs a hash only after a crash.
        """
        for name, entry in manifest["pending"].items():
            committed = manifest["files"].get(name)
            if not (CHECKPOINT_NAME.match(name.removesuffix(".pt")) and isinstance(entry, dict)):
                continue
            if isinstance(committed, dict) and entry_digest(committed) == entry_digest(entry):
                continue
            try:
                if file_matches(self.directory / name, entry):
                    manifest["files"][name] = entry
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
        manifest["pending"] = {}

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        staged = self.directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write_file(staged, lambda handle: handle.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
            self._reached("manifest staged")
            os.replace(staged, self.directory / MANIFEST)
        finally:
            staged.unlink(missing_ok=True)

    def _doomed(self, manifest: Mapping[str, Any]) -> list[str]:
        """The periodic files beyond the newest ``keep_last``."""
        periodic = sorted((name for name in manifest["files"] if PERIODIC_FILE.match(name)),
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
        present = sorted(path.name for path in self.directory.glob("*.pt") if CHECKPOINT_NAME.match(path.stem))
        if manifest is None:
            if present:
                raise CheckpointError(f"{self.directory} holds {', '.join(present)} but no {MANIFEST}, so none of them "
                                      f"can be verified; {_UNTOUCHED}")
            return None
        # Every entry is a candidate, committed or pending, ordered by its own position: a file
        # renamed into place by a save cut short before its commit counts as what it holds.
        candidates = [(entry, name) for table in ("files", "pending") for name, entry in manifest[table].items()
                      if CHECKPOINT_NAME.match(name.removesuffix(".pt")) and name.endswith(".pt") and isinstance(entry, dict)]
        # Newest by position; on a tie last.pt first, as it is the one written every time.
        candidates.sort(key=lambda item: (item[0].get("epoch", -1), item[0].get("batch", -1), item[0].get("step", -1),
                                          item[1] == "last.pt"), reverse=True)
        left = {name: sum(1 for _, other in candidates if other == name) for _, name in candidates}
        digests: dict[tuple[str, str], str | None] = {}  # (file, algorithm) -> its digest, None when unreadable
        rejected: dict[str, str] = {}
        self._rejected = {}
        for entry, name in candidates:
            path = self.directory / name
            algorithm, expected = entry_digest(entry)
            if (name, algorithm) not in digests:
                try:
                    digests[name, algorithm] = file_digest(path, algorithm) if path.is_file() else None
                except OSError:
                    digests[name, algorithm] = None
            digest = digests[name, algorithm]
            problem = None
            if digest is not None and digest == expected:
                problem = shards_problem(self.directory, entry)
                if problem is None:
                    self._check_sizes(manifest, candidates, found=name)
                    return name[: -len(".pt")]
            left[name] -= 1
            if not left[name] and digest is None and name not in manifest["files"]:
                continue  # a save killed before its file was renamed into place: nothing of it ever landed
            if not left[name]:
                rejected[name] = self._reject(manifest, name, f"incomplete: {problem}" if problem else "missing"
                                              if digest is None else
                                              f"corrupt or truncated: its digest does not match {MANIFEST}")
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
        path = self.path(name) if CHECKPOINT_NAME.match(name) else Path(name)
        return read_checkpoint(path)
