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
file just written by ``torch.save``) and the digest alone (XXH3-128 of the serialized bytes, in memory;
ADR 0037).
Throughput ratio = baseline time / time, against the
baselines measured in the same run; target ≥ 0.9 against the bare operation. A benchmark, not a test: PASS/MISS.

Then the loop's **stall**: a 2×Linear(2048, 2048) model with AdamW (96 MiB of checkpointed state)
trained by ``Trainer.fit`` on one thread at two cadences: a save every 40 steps (130 steps: slower
than the writer, target ≤ 0.3) and a save every 5 steps (42 steps: faster than the writer can
finish one, target ≤ 1.0), each with ``last`` at the epoch's end too. Interleaved in each round:
the run with no store, the run with ``async_checkpoint`` on and off; then a bare ``torch.save`` of
the same captured state. Each run is timed by its own clock (a hook at every batch's end): around
each save, the gap of the step it follows and the next ones up to 10, less as many undisturbed gaps
(the smaller of the run's own median gap and that of the round's run without a store), and for the
save at the epoch's end, ``fit``'s tail beyond that of the run without a store. Stall per
checkpoint = that excess / saves; its ratio to the bare ``torch.save`` is the figure to keep low (the snapshot copy is the floor).
The machine is shared: rounds are interleaved, medians reported, and the load average printed.

    python benchmarks/checkpoint_io.py [--rounds 7] [--mib 96] [--quick] [--stall-rounds 5] [--only io|stall]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import xxhash
from _common import machine, median_spread, table

from trainwire.checkpointing.store import LocalCheckpointStore


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


CADENCES = ((40, 130, 0.3), (5, 42, 1.0))  # (a save every n steps, steps in the run, target): slower than the writer, then faster


def stall(rounds: int, folder: Path, cadences=CADENCES) -> None:
    """The loop's stall per checkpoint, async on and off, against a bare torch.save of the same state."""
    import functools

    from trainwire import (
        Cadence,
        Classification,
        IgnoreNonFinite,
        Trainer,
        TrainerSettings,
    )

    torch.manual_seed(0)
    longest = max(steps for _, steps, _ in cadences)
    batches = [(torch.randn(8, 2048), torch.randint(0, 2048, (8,))) for _ in range(longest)]
    initial = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2048)).state_dict()
    captured: dict = {}  # the state the last save wrote, for the bare torch.save of the same state

    class Gaps:
        """The loop's own clock: the end of every batch."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_batch_end(self, state, loss) -> None:
            self.ends.append(time.perf_counter())

    def run(kind: str, every: int, steps: int) -> tuple[list[float], float]:
        """One run's step gaps (end of batch k to end of batch k+1) and its tail (last batch's end to fit's return)."""
        model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2048))
        model.load_state_dict(initial)
        store = None
        if kind != "none":
            directory = folder / f"stall-{kind}"
            shutil.rmtree(directory, ignore_errors=True)
            store = LocalCheckpointStore(directory)
        settings = TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=1000, async_checkpoint=kind == "async")
        trainer = Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
                          settings=settings, checkpoints=store, nonfinite=IgnoreNonFinite(),
                          checkpoint_policy=Cadence(every_n_epochs=1000, every_n_steps=every), hooks=[gaps := Gaps()])
        trainer.fit(model, batches[:steps])
        ended = time.perf_counter()
        if store is not None:
            store.close()
            captured["state"] = torch.load(store.path("last"), weights_only=True)
        return [b - a for a, b in zip(gaps.ends, gaps.ends[1:])], ended - gaps.ends[-1]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from trainwire.checkpointing.writer import Snapshots, snapshot

    kinds = ("none", "async", "sync")
    times: dict[tuple[int, str], list[tuple[list[float], float]]] = {(every, kind): [] for every, _, _ in cadences
                                                                    for kind in kinds}
    copies: dict[str, list[float]] = {name: [] for name in ("bare torch.save", "snapshot", "reused")}
    reused = Snapshots()  # as the writer takes them: into the buffers of the snapshot before
    bare = folder / "stall-bare.pt"
    try:
        for every, steps, _ in cadences:
            run("async", every, min(steps, 2 * every))  # warm-up, untimed
        for index in range(rounds):
            for every, steps, _ in cadences:
                for kind in kinds if index % 2 == 0 else reversed(kinds):
                    times[every, kind].append(run(kind, every, steps))
            copies["bare torch.save"].append(timed(lambda: torch.save(captured["state"], bare))[0])
            copies["snapshot"].append(timed(lambda: snapshot(captured["state"]))[0])
            copies["reused"].append(timed(lambda: reused.take(captured["state"]))[0])
    finally:
        torch.set_num_threads(threads)
    size = bare.stat().st_size
    save = statistics.median(copies["bare torch.save"])
    rows = []
    for every, steps, target in cadences:
        saves = steps // every + (steps % every != 0)  # the cadence's, and last.pt at the epoch's end
        # Measured by the run's own clock, around each save: the gap of the step after which it was taken and
        # the next ones up to 10 (the writer's time beside the loop), less as many undisturbed gaps; the last
        # save, at the epoch's end, by fit's tail beyond that of the round's run without a store. Undisturbed is
        # the smaller median gap of the run itself and of that run without a store (a save every few steps
        # touches every step). The machine's speed drifts by tens of percent between runs here, so a whole
        # run's time against another's would count the drift as the saves' cost.
        window = min(every, 11)
        base = [statistics.median(gaps) for gaps, _ in times[every, "none"]]
        for kind in ("async", "sync"):
            per_round = []
            for (gaps, tail), gap, (_, none_tail) in zip(times[every, kind], base, times[every, "none"]):
                usual = min(gap, statistics.median(gaps))
                near = [gaps[index] for start in range(every - 1, len(gaps), every)
                        for index in range(start, min(start + window, len(gaps)))]
                per_round.append((sum(near) - len(near) * usual + tail - none_tail) / saves)
            per = statistics.median(per_round)
            ratio = per / save
            rows.append([f"every {every} steps ({saves} saves in {steps} steps), async_checkpoint="
                         f"{'true' if kind == 'async' else 'false'}",
                         f"{statistics.median(base) * 1000:.1f}", f"{per * 1000:.0f}",
                         f"{min(per_round) * 1000:.0f}–{max(per_round) * 1000:.0f}", f"{ratio:.2f}",
                         f"≤ {target}: {'PASS' if ratio <= target else 'MISS'}" if kind == "async" else ""])
    rows.append(["bare torch.save of the same state", "", f"{save * 1000:.0f}", "", "1.00", ""])
    copy = statistics.median(copies["snapshot"])
    rows.append(["snapshot alone, into new memory", "", f"{copy * 1000:.0f}", "", f"{copy / save:.2f}", ""])
    again = statistics.median(copies["reused"])
    rows.append(["snapshot into the buffers of the one before (what the writer does: the async floor, "
                 "the loop's cost with a free core)", "", f"{again * 1000:.0f}", "", f"{again / save:.2f}", ""])
    print(f"\n### Loop stall per checkpoint ({size / 2**20:.0f} MiB state, 1 thread, {rounds} interleaved rounds, "
          "median)\n")
    print(f"Machine: {machine()}.\n")
    print(table(["run", "step ms without a store", "stall ms / checkpoint", "min–max ms",
                 "stall vs bare torch.save", "target"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=96)
    parser.add_argument("--stall-rounds", type=int, default=5)
    parser.add_argument("--only", choices=("io", "stall"))
    parser.add_argument("--quick", action="store_true", help="3 rounds of 16 MiB, 2 stall rounds")
    args = parser.parse_args()
    rounds, mib = (3, 16) if args.quick else (args.rounds, args.mib)
    if args.only != "io":
        with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:
            stall(2 if args.quick else args.stall_rounds, Path(folder),
                  ((5, 12, 1.0),) if args.quick else CADENCES)
    if args.only == "stall":
        return
    state = make_state(mib)
    names = ("bare save", "fsync alone", "digest alone", "bare save + fsync", "store save", "bare load", "store load")
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
            times["digest alone"].append(timed(lambda: xxhash.xxh3_128(data).hexdigest()))
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
    bare_save, fsync, sha = wall["bare save"][0], wall["fsync alone"][0], wall["digest alone"][0]
    bare_load = wall["bare load"][0]
    print(f"\nCeilings on this machine. A durable save costs at least bare save + fsync alone, so store save "
          f"vs bare can reach at most {bare_save / (bare_save + fsync):.2f}, and that only where a free core hides "
          f"the digest ({sha * 1000:.0f} ms alone); with no free core, at most "
          f"{bare_save / (bare_save + fsync + sha):.2f}. "
          f"Store load hides its digest only on a free core too; with none, it reaches at most "
          f"{bare_load / (bare_load + sha):.2f} of bare load.")


if __name__ == "__main__":
    main()
