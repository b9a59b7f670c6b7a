"""The checkpoint file format: what makes a file on disk a checkpoint that may be loaded.

A checkpoint folder holds ``last.pt``, ``best.pt`` and ``epoch-XXXX.pt`` beside a ``manifest.json``
that lists each file's digest (and, for a sharded save, each shard's). The manifest is the
commit marker: a file is used only when its bytes hash to what the manifest says, so a file
that is half-written, truncated, flipped or foreign is never loaded, and it is loaded with
``torch.load(weights_only=True)`` only. Files are written durably: under a temporary name in
the same folder, fsynced, renamed, and the folder fsynced (ADR 0009). Where the files are kept
and pruned is the store's (``store.py``); this module is the bytes' side of it.

The digest is XXH3-128 (ADR 0037): it finds a torn, truncated or flipped file as surely as
sha256 does, at about 19 GB/s where sha256 runs at 1.7 (so hashing a 96 MiB checkpoint costs
5 ms, not 56). Entries written before it carry ``sha256``, and still verify.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import xxhash

from trainwire.checkpointing import sharding
from trainwire.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = 1  # of the manifest (the state inside a checkpoint has its own: parts.FORMAT)
CHECKPOINT_NAME = re.compile(r"^(last|best|epoch-\d{4,})$")  # the names a checkpoint may have, without ``.pt``
PERIODIC_FILE = re.compile(r"^epoch-\d{4,}\.pt$")

_CHUNK = 1 << 20  # bytes read per call when hashing a file
_BATCH = 1 << 20  # torch.save's small writes (headers, small tensors) are gathered up to this

DIGEST = "xxh3_128"  # the digest field of the entries a save writes now
_DIGESTS = {DIGEST: xxhash.xxh3_128, "sha256": hashlib.sha256}  # what an entry may carry, preferred first


def entry_digest(entry: Mapping[str, Any]) -> tuple[str, str]:
    """The digest a manifest entry holds, as (algorithm, hex): its ``xxh3_128``, or the ``sha256`` of an older save."""
    for algorithm in _DIGESTS:
        value = entry.get(algorithm)
        if isinstance(value, str):
            return algorithm, value
    raise ValueError(f"it has no digest ({' or '.join(_DIGESTS)})")


def file_digest(path: Path, algorithm: str = DIGEST) -> str:
    """The hex digest of the file at ``path``. (Read, not mapped: a mapping of a file that another process
    truncates kills this one with SIGBUS.)"""
    digest = _DIGESTS[algorithm]()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def file_matches(path: Path, entry: Mapping[str, Any]) -> bool:
    """Whether the bytes of the file at ``path`` have the digest ``entry`` lists."""
    algorithm, expected = entry_digest(entry)
    return file_digest(path, algorithm) == expected


class HashingWriter:
    """The file object ``torch.save`` writes to: bytes go to ``fd`` and into the digest as they pass.

    So the file is never read back to hash it. Short writes (headers, small tensors) are
    gathered and written in batches; a long one (a tensor's storage) goes straight through.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.digest = _DIGESTS[DIGEST]()
        self._batch = bytearray()

    def write(self, data) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        count = len(view)
        self.digest.update(view)  # before the write: torch may reuse the buffer once write returns
        if count >= _BATCH:
            self._write_batch()
            self._write_all(view)
        else:
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

    def close(self) -> dict[str, Any]:
        """Flushes what is gathered; returns the manifest fields of what was written (digest and size)."""
        self._write_batch()
        return {DIGEST: self.digest.hexdigest(), "size": self.size}


def fsync_dir(directory: Path) -> None:
    # The rename is only durable once the folder's entry is: without this a power cut can
    # bring back the old name (or none) after rename returned.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def copy_into(source: Path, handle) -> None:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists a few files (and their shards): far below this
_COUNTS = ("size", "epoch", "batch", "step")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``; None when there is none; CheckpointError when it is unreadable.

    Read as untrusted input: a plain file only (not a link, a device or a pipe), at most
    ``MAX_MANIFEST_BYTES``, and each field of the expected type, so a hostile or damaged manifest
    is one line, never a traceback or an unbounded read.
    """
    path = Path(directory) / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        reason = "it is a symbolic link; a manifest must be a plain file" if error.errno == errno.ELOOP else error.strerror
        raise CheckpointError(f"cannot read {path}: {reason}; no checkpoint in it is used") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"cannot read {path}: it is not a plain file; no checkpoint in it is used")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{path} is {info.st_size} bytes, more than a manifest ever is "
                                  f"({MAX_MANIFEST_BYTES}); no checkpoint in it is used")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    try:
        manifest = json.loads(data.decode("utf-8"))  # a flipped high bit is a UnicodeDecodeError, a ValueError
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
                or not isinstance(manifest.setdefault("pending", {}), dict):
            raise ValueError("no 'files' table")
        _check_fields(manifest)
    except RecursionError:
        raise CheckpointError(f"{path} is not a valid manifest (nested deeper than a manifest ever is); "
                              "no checkpoint in it is used") from None
    except (ValueError, AttributeError) as error:
        reason = f"{type(error).__name__} at byte {error.start}" if isinstance(error, UnicodeDecodeError) else error
        raise CheckpointError(f"{path} is not a valid manifest ({reason}); no checkpoint in it is used") from None
    return manifest


def _check_fields(manifest: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first entry field of the wrong type."""
    for table in ("files", "pending"):
        for name, entry in manifest[table].items():
            where = f"{table}[{name!r}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} is {entry!r:.40}, not a table")
            try:
                entry_digest(entry)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            for key in _COUNTS:
                value = entry.get(key, 0)
                if type(value) is not int or value < 0:
                    raise ValueError(f"{where}.{key} is {value!r:.40}, not a count")
            shards = entry.get("shards", {})
            if not isinstance(shards, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in shards.items()):
                raise ValueError(f"{where}.shards is not a table of file names and digests")


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


def _match(path: Path, entries: Sequence[Mapping[str, Any]], digests: Mapping[str, str]) -> dict[str, Any]:
    """The entry whose digest the file's bytes have (``digests``: algorithm -> hex of the file); CheckpointError if none."""
    for entry in entries:
        algorithm, expected = entry_digest(entry)
        if digests.get(algorithm) == expected:
            problem = shards_problem(path.parent, entry)
            if problem:
                raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
            return dict(entry)
    raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its digest does not match {MANIFEST}")


def _file_digests(path: Path, entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The file's digest under each algorithm that ``entries`` use (one, but for a manifest older saves wrote)."""
    return {algorithm: file_digest(path, algorithm) for algorithm in {entry_digest(entry)[0] for entry in entries}}


def shards_problem(directory: Path, entry: Mapping[str, Any]) -> str | None:
    """Why the shard files ``entry`` lists do not verify (missing, or another digest); None when they all do."""
    algorithm = entry_digest(entry)[0]  # a save hashes its shards as it hashes its file
    for name, digest in (entry.get("shards") or {}).items():
        path = directory / name
        try:
            if file_digest(path, algorithm) != digest:
                return f"its shard {path} does not match {MANIFEST}"
        except OSError:
            return f"its shard {path} is missing"
    return None


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest entry of the checkpoint at ``path`` when its bytes match it; CheckpointError otherwise."""
    path = Path(path)
    entries = _entries(path)
    return _match(path, entries, _file_digests(path, entries))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verifies the checkpoint at ``path`` against its manifest, then loads it with ``weights_only=True``.

    Only tensors and plain containers load: a file that carries any other pickled object is
    refused before that object is built, so a malicious payload never runs.
    """
    path = Path(path)
    entries = _entries(path)
    # A helper thread hashes the file while torch.load parses it, so with a free
    # core the check costs no time, and without one about 5 ms per 100 MB. Nothing is returned, and no
    # verdict of the parse is given, before the digest matches the manifest: a file that does not
    # match is reported as corrupt whatever the parse made of it.
    hashed: dict[str, Any] = {}

    def hash_file() -> None:
        try:
            hashed["digests"] = _file_digests(path, entries)
        except OSError as error:
            hashed["error"] = error

    hashing = threading.Thread(target=hash_file, name="trainwire-digest", daemon=True)
    hashing.start()
    state: Any = None
    failure: Exception | None = None
    try:
        state = load_weights_only(path)
    except ValueError as error:
        failure = error
    finally:
        hashing.join()
    if "error" in hashed:
        error = hashed["error"]
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    _match(path, entries, hashed["digests"])
    if failure is not None:
        raise CheckpointError(f"checkpoint {path} was refused: {failure}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of state")
    sharded = state.pop("sharded", None)
    if isinstance(sharded, dict):  # FSDP's parts: their tensors are in the shard folder, verified above
        for key in sharded["parts"]:
            state[key] = sharding.ShardedState(path.parent / sharded["folder"], state[key])
    return state


def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; ValueError with the one-line reason when refused.

    A file that is not torch's zip archive (a raw pickle, say) is refused unread: torch's legacy
    reader would print a two-line warning about its pickle protocol before refusing it.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError("it is not a torch.save archive (a raw pickle, or another format), so it is not unpickled")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses with UnpicklingError; a bad archive raises others
        raise ValueError(f"torch.load(weights_only=True) refused it: {refusal_reason(error)}") from None


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

