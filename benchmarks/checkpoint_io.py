"""Checkpoint throughput: ``LocalCheckpointStore`` save and load against a bare ``torch.save`` / ``torch.load``.

The state is what trainwire checkpoints for an MLP with AdamW (weights, the two moment buffers,
the best weights): about ``--mib`` MiB of float32 tensors, captured once and saved again and
again. Rounds interleave the operations; each is timed end to end (wall clock, and the
process's CPU time, which a busy machine disturbs less):

* bare save — ``torch.save(state, path)`` (no fsync: durability is not included);
* bare save + fsync — the same into an open file, then ``os.fsync``: the cheapest durable save;
* store save — ``LocalCheckpointStore.save(state, ["last"])``: temporary file hashed as it is
  written, one fsync, the manifest written twice, rename, two folder fsyncs (ADR 0009);
* bare load — ``torch.load(path, weights_only=True)``;
* store load — ``LocalCheckpointStore.load("last")``: the file hashed on a helper thread while
  ``torch.load(weights_only=True)`` parses it; returned once the hash matches the manifest.

Also shown, as the parts no checkpoint with these guarantees can skip: ``fsync`` alone (of a
file just written by ``torch.save``) and sha256 alone (of the serialized bytes, in memory).
Throughput ratio = baseline time / time, against the
baselines measured in the same run; target ≥ 0.9 against the bare operation. A benchmark, not a test: PASS/MISS.

    python benchmarks/checkpoint_io.py [--rounds 7] [--mib 64] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch

from _common import machine, median_spread, table

from trainwire.checkpoints import LocalCheckpointStore


def make_state(mib: int) -> dict:
    width = int((mib * 2**20 / 4 / 4) ** 0.5)  # 4 copies of a width×width layer: weights, exp_avg, exp_avg_sq, best
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"format": 1, "model": weights, "optimizer": optimizer.state_dict(),
            "best_model": {k: v.clone() for k, v in weights.items()}, "position": {"epoch": 1, "batch": 0}}


def timed(action) -> tuple[float, float]:
    """Wall and CPU seconds of ``action()`` (CPU: every thread of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 16 MiB")
    args = parser.parse_args()
    rounds, mib = (3, 16) if args.quick else (args.rounds, args.mib)
    state = make_state(mib)
    names = ("bare save", "fsync alone", "sha256 alone", "bare save + fsync", "store save", "bare load", "store load")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:  # the disk runs go to, not a tmpfs
        bare, synced, unsynced = Path(folder) / "bare.pt", Path(folder) / "synced.pt", Path(folder) / "unsynced.pt"
        store = LocalCheckpointStore(Path(folder) / "checkpoints")
        meta = {"epoch": 1, "batch": 0, "step": 1}

        def save_synced() -> None:
            with open(synced, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())

        def fsync_alone() -> tuple[float, float]:
            with open(unsynced, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                return timed(lambda: os.fsync(handle.fileno()))

        store.save(state, ["last"], meta=meta)  # warm-up, untimed
        torch.save(state, bare)
        size = bare.stat().st_size
        data = bare.read_bytes()
        for _ in range(rounds):
            times["bare save"].append(timed(lambda: torch.save(state, bare)))
            times["fsync alone"].append(fsync_alone())
            times["sha256 alone"].append(timed(lambda: hashlib.sha256(data).hexdigest()))
            times["bare save + fsync"].append(timed(save_synced))
            times["store save"].append(timed(lambda: store.save(state, ["last"], meta=meta)))
            times["bare load"].append(timed(lambda: torch.load(bare, weights_only=True)))
            times["store load"].append(timed(lambda: store.load("last")))
    wall = {name: median_spread([w for w, _ in values]) for name, values in times.items()}
    cpu = {name: median_spread([c for _, c in values])[0] for name, values in times.items()}
    rows = []
    for name in names:
        median, low, high = wall[name]
        row = [name, f"{median * 1000:.0f}", f"{low * 1000:.0f}–{high * 1000:.0f}", f"{cpu[name] * 1000:.0f}",
               f"{size / 2**20 / median:.0f}", "", "", ""]
        if name.startswith(("bare", "store")):
            baseline = "bare load" if "load" in name else "bare save"
            ratio = wall[baseline][0] / median
            row[5] = f"{ratio:.2f}"
            if name == "store save":
                row[6] = f"{wall['bare save + fsync'][0] / median:.2f}"
            if name.startswith("store"):
                row[7] = f"≥ 0.9: {'PASS' if ratio >= 0.9 else 'MISS'}"
        rows.append(row)
    print(f"### Checkpoint save/load ({size / 2**20:.0f} MiB state, {rounds} rounds, median)\n")
    print(f"Machine: {machine()}\n")
    print(table(["operation", "median ms", "min–max ms", "CPU ms", "MiB/s", "throughput vs bare",
                 "vs bare + fsync", "target"], rows))
    bare_save, fsync, sha = wall["bare save"][0], wall["fsync alone"][0], wall["sha256 alone"][0]
    bare_load = wall["bare load"][0]
    print(f"\nCeilings on this machine. A durable save costs at least bare save + fsync alone, so store save "
          f"vs bare can reach at most {bare_save / (bare_save + fsync):.2f}, and that only where a free core hides "
          f"the sha256 ({sha * 1000:.0f} ms alone); with no free core, at most "
          f"{bare_save / (bare_save + fsync + sha):.2f}. "
          f"Store load hides its sha256 only on a free core too; with none, it reaches at most "
          f"{bare_load / (bare_load + sha):.2f} of bare load.")


if __name__ == "__main__":
    main()
