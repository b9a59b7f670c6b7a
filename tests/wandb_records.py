"""Read back what a real W&B offline run logged, for assertions in tests.

``wandb.init(mode="offline")`` with ``WANDB_DIR=<dir>`` writes
``<dir>/wandb/offline-run-*/run-<id>.wandb``: a LevelDB-style log of wandb's own
protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2.Record``).
wandb >= 0.2x no longer ships a Python reader for it (the old
``wandb.sdk.internal.datastore`` is gone; only the Go ``wandb-core`` reads it),
so the small block format is decoded here:

* the file starts with a 7-byte header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE),
  version ``0`` (uint8);
* the rest is cut into 32 KiB blocks (the first block includes the file header);
  each chunk has a 7-byte header ``crc32 (uint32 LE), length (uint16 LE), type (uint8)``
  followed by ``length`` bytes. ``crc32`` is plain ``zlib.crc32`` over
  ``type byte + data``. Types: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST (a record split
  across blocks). A block tail shorter than 7 bytes is zero padding.

Everything stored as JSON (``value_json``) is decoded. wandb's bookkeeping key
``_wandb`` is left out of ``config`` and ``summary``; the user-visible wandb keys
(``_step``, ``_runtime``, ``_timestamp``) are kept in ``history`` and ``summary``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_run_file(wandb_dir: str | Path) -> Path:
    """Return the single ``run-*.wandb`` file anywhere under ``wandb_dir``."""
    # resolve() de-duplicates paths reached through wandb's ``latest-run`` symlink
    found = sorted({path.resolve() for path in Path(wandb_dir).rglob("run-*.wandb")})
    assert len(found) == 1, f"expected exactly one run-*.wandb under {wandb_dir}, found {found}"
    return found[0]


def _chunks(raw: bytes):
    """Yield ``(type, data)`` for each chunk of the log, checking CRCs."""
    pos = _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(raw):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER.size:  # zero-padded block tail
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(raw, pos)
        start = pos + _CHUNK_HEADER.size
        data = raw[start : start + length]
        if kind == 0 or len(data) < length:  # preallocated zeros / torn tail of a killed run
            return
        assert zlib.crc32(bytes([kind]) + data) == crc, f"bad CRC in chunk at byte {pos}"
        yield kind, data
        pos = start + length


def read_records(run_file: str | Path) -> list[wandb_internal_pb2.Record]:
    """Parse every ``Record`` in ``run_file``, in file order."""
    raw = Path(run_file).read_bytes()
    ident, magic, version = _FILE_HEADER.unpack_from(raw)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"not a W&B log: {run_file}"
    records, pending = [], None
    for kind, data in _chunks(raw):
        if kind in (_FULL, _FIRST):
            assert pending is None, "new record started inside an unfinished one"
            pending = b""
        assert pending is not None, f"chunk type {kind} outside a record"
        pending += data
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = None
    return records


@dataclass
class OfflineRun:
    """What an offline run logged, decoded into plain Python values."""

    project: str | None
    entity: str | None
    name: str | None
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    run_id: str | None = None
    records: list = field(default_factory=list, repr=False)  # raw Records, for anything else


def _path(item) -> list[str]:
    """Key path of a Config/Summary/History item: ``nested_key`` if set, else ``[key]``."""
    return list(item.nested_key) or [item.key]


def _set(target: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _drop(target: dict, path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part, {})
    target.pop(path[-1], None)


def _unwrap(value: Any) -> Any:
    """Strip the ``{"value": v, "desc": d}`` wrapper some wandb versions put on config."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _history_value(item) -> Any:
    # Newer protos have a typed ``value`` oneof; wandb-core 0.31 still fills value_json.
    has_oneof = "value" in item.DESCRIPTOR.oneofs_by_name
    kind = item.WhichOneof("value") if has_oneof else None
    if kind is None:
        return json.loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def read_run(wandb_dir: str | Path) -> OfflineRun:
    """Decode the single offline run under ``wandb_dir``."""
    records = read_records(find_run_file(wandb_dir))
    run = OfflineRun(project=None, entity=None, name=None, records=records)
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.project, run.entity = r.project or None, r.entity or None
            run.name, run.run_id = r.display_name or None, r.run_id or None
            for item in r.config.update:
                _set(run.config, _path(item), json.loads(item.value_json))
            for item in r.summary.update:
                _set(run.summary, _path(item), json.loads(item.value_json))
        elif kind in ("config", "summary"):
            target = run.config if kind == "config" else run.summary
            for item in getattr(rec, kind).update:
                _set(target, _path(item), json.loads(item.value_json))
            for item in getattr(rec, kind).remove:
                _drop(target, _path(item))
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _set(row, _path(item), _history_value(item))
            run.history.append(row)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config.pop("_wandb", None)
    run.summary.pop("_wandb", None)
    run.config = {key: _unwrap(value) for key, value in run.config.items()}
    return run
