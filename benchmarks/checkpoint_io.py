"""Checkpoint throughput: ``LocalCheckpointStore`` save and load against a bare ``torch.save`` / ``torch.load``.

The state is what trainwire checkpoints for an MLP with AdamW (weights, the two moment buffers,
the best weights): about ``--mib`` MiB of float32 tensors, captured once and saved again and
again. Rounds interleave the four operations; each is timed end to end:

* bare save — ``torch.save(state, path)`` (no fsync: durability is not included);
* store save — ``LocalCheckpointStore.save(state, ["last"])``: temporary file, fsync, sha256,
  manifest written twice with fsyncs, rename, folder fsyncs (ADR 0009);
* bare load — ``torch.load(path, weights_only=True)``;
* store load — ``LocalCheckpointStore.load("last")``: sha256 check against the manifest, then the same load.

Also shown: ``torch.save`` followed by fsync, the part of the store's cost that is the disk's.
Throughput ratio = bare time / store time; target ≥ 0.9. A benchmark, not a test: PASS/MISS.

    python benchmarks/checkpoint_io.py [--rounds 7] [--mib 64] [--quick]
"""

from __future__ import annotations

import argparse
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


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 16 MiB")
    args = parser.parse_args()
    rounds, mib = (3, 16) if args.quick else (args.rounds, args.mib)
    state = make_state(mib)
    times: dict[str, list[float]] = {k: [] for k in ("bare save", "bare save + fsync", "store save", "bare load",
                                                      "store load")}
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:  # the disk runs go to, not a tmpfs
        bare, synced = Path(folder) / "bare.pt", Path(folder) / "synced.pt"
        store = LocalCheckpointStore(Path(folder) / "checkpoints")

        def save_synced() -> None:
            with open(synced, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())

        store.save(state, ["last"], meta={"epoch": 1, "batch": 0, "step": 1})  # warm-up, untimed
        torch.save(state, bare)
        size = bare.stat().st_size
        for _ in range(rounds):
            times["bare save"].append(timed(lambda: torch.save(state, bare)))
            times["bare save + fsync"].append(timed(save_synced))
            times["store save"].append(timed(lambda: store.save(state, ["last"], meta={"epoch": 1, "batch": 0,
                                                                                        "step": 1})))
            times["bare load"].append(timed(lambda: torch.load(bare, weights_only=True)))
            times["store load"].append(timed(lambda: store.load("last")))
    med = {name: median_spread(values)[0] for name, values in times.items()}
    rows = []
    for name, values in times.items():
        median, low, high = median_spread(values)
        baseline = "bare load" if "load" in name else "bare save"
        ratio = med[baseline] / median
        target = f"≥ 0.9: {'PASS' if ratio >= 0.9 else 'MISS'}" if name.startswith("store") else ""
        rows.append([name, f"{median * 1000:.0f}", f"{low * 1000:.0f}–{high * 1000:.0f}",
                     f"{size / 2**20 / median:.0f}", f"{ratio:.2f}", target])
    print(f"### Checkpoint save/load ({size / 2**20:.0f} MiB state, {rounds} rounds, median)\n")
    print(f"Machine: {machine()}\n")
    print(table(["operation", "median ms", "min–max ms", "MiB/s", "throughput vs bare", "target"], rows))


if __name__ == "__main__":
    main()
