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
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn
from torch.optim import Optimizer

from trainwire.errors import CheckpointError, ConfigError

MANIFEST = "manifest.json"
FORMAT = 1
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
        """The name of the newest checkpoint that verifies, or None when there is none."""

    @abstractmethod
    def load(self, name: str) -> dict[str, Any]:
        """The state saved under ``name`` (or at a path); raises CheckpointError before returning anything unverified."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a valid manifest ({error}); no checkpoint in it is used") from None
    manifest.setdefault("pending", {})
    return manifest


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest entry of the checkpoint at ``path`` when its bytes match it; CheckpointError otherwise."""
    path = Path(path)
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
    digest = _sha256(path)
    for entry in entries:
        if entry.get("sha256") == digest:
            return entry
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its sha256 does not match {MANIFEST}")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verifies the checkpoint at ``path`` against its manifest, then loads it with ``weights_only=True``.

    Only tensors and plain containers load: a file that carries any other pickled object is
    refused before that object is built, so a malicious payload never runs.
    """
    path = Path(path)
    verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses with UnpicklingError; a bad archive raises others
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise CheckpointError(f"checkpoint {path} was refused by torch.load(weights_only=True): {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of state")
    return state


def load_weights(path: str | os.PathLike[str], model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, Any]:
    """Loads only the model's weights (and the optimizer's state, when given) from a verified checkpoint.

    For fine-tuning from someone else's run: nothing else of theirs (schedule, RNG, position)
    is applied. Returns the whole checkpoint for inspection.
    """
    state = read_checkpoint(path)
    missing = [key for key in ("model", "optimizer") if key not in state and (key == "model" or optimizer)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {' or '.join(missing)} state")
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints as files in ``directory``, verified by ``manifest.json``.

    Keeps ``last.pt``, ``best.pt`` and the newest ``keep_last`` periodic ``epoch-XXXX.pt``;
    older periodic files are pruned only after a new one is committed. ``config_yaml``, when
    given, is stored in every checkpoint as the run's resolved config.
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3, config_yaml: str | None = None) -> None:
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"trainer.keep_last={keep_last!r} must be an integer >= 1")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.config_yaml = config_yaml
        self.log = structlog.get_logger("trainwire")

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.pt"

    def start(self) -> None:
        if not self.directory.is_dir():
            return
        for stale in self.directory.glob(".*.tmp"):  # what a save killed mid-write left
            stale.unlink(missing_ok=True)

    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> None:
        bad = [name for name in names if not _NAME.match(name)]
        if bad or not names:
            raise ValueError(f"checkpoint names must be last, best or epoch-NNNN; got {list(names)}")
        target = self.path(names[0])
        token = uuid.uuid4().hex[:8]
        staged = [self.directory / f".{name}.pt.{token}.tmp" for name in names]
        payload = {**state, "config_yaml": self.config_yaml}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest = read_manifest(self.directory) or {"format": FORMAT, "files": {}, "pending": {}}
            _write_file(staged[0], lambda handle: torch.save(payload, handle))
            entry = {"sha256": _sha256(staged[0]), "size": staged[0].stat().st_size, **meta}
            for extra in staged[1:]:  # one write, several names: a hard link shares the fsynced bytes
                try:
                    os.link(staged[0], extra)
                except OSError:
                    _write_file(extra, lambda handle: _copy_into(staged[0], handle))
            manifest["pending"] = {f"{name}.pt": entry for name in names}
            self._write_manifest(manifest)
            for name, path in zip(names, staged):
                os.replace(path, self.path(name))
            _fsync_dir(self.directory)
            manifest["files"].update(manifest["pending"])
            manifest["pending"] = {}
            self._write_manifest(manifest)
        except OSError as error:
            where = error.filename or target
            raise CheckpointError(f"could not write checkpoint {target}: {error.strerror or error} ({where})") from None
        finally:
            for path in staged:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        try:
            self._prune(manifest)
        except OSError as error:  # the new checkpoint is committed; only the old ones are still there
            raise CheckpointError(f"saved {target}, but could not prune old checkpoints in {self.directory}: "
                                  f"{error.strerror or error}") from None

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        staged = self.directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _write_file(staged, lambda handle: handle.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))
            os.replace(staged, self.directory / MANIFEST)
        finally:
            staged.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def _prune(self, manifest: dict[str, Any]) -> None:
        periodic = sorted((name for name in manifest["files"] if _PERIODIC.match(name)), reverse=True)
        doomed = periodic[self.keep_last:]
        if not doomed:
            return
        for name in doomed:  # out of the manifest first: a crash in between leaves an unused file, never a bad entry
            del manifest["files"][name]
        self._write_manifest(manifest)
        for name in doomed:
            (self.directory / name).unlink(missing_ok=True)

    def latest(self) -> str | None:
        manifest = read_manifest(self.directory) if self.directory.is_dir() else None
        if manifest is None:
            return None
        entries = {**manifest["pending"], **manifest["files"]}
        # Newest by position; on a tie last.pt first, as it is the one written every time.
        order = sorted(entries, key=lambda name: (entries[name].get("epoch", -1), entries[name].get("batch", -1),
                                                  entries[name].get("step", -1), name == "last.pt"), reverse=True)
        for name in order:
            try:
                verify(self.directory / name)
            except CheckpointError as error:
                self.log.warning("checkpoint_rejected", file=str(self.directory / name), reason=str(error))
                continue
            return name[: -len(".pt")]
        return None

    def load(self, name: str) -> dict[str, Any]:
        path = self.path(name) if _NAME.match(name) else Path(name)
        return read_checkpoint(path)
