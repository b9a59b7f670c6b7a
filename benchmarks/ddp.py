"""DDP on 2 CPU processes (gloo) against one process: training throughput, reported.

The same job through the CLI — the bundled digits, an MLP 64→H→H→10, AdamW, warmup-cosine, norm
clipping, validation each epoch — at the same global batch:

* one process, batch 2B, 1 thread and 2 threads (all the cores);
* ``torchrun --nproc_per_node=2 ... strategy=ddp`` at batch B per process, 1 thread each.

Throughput is training samples per second from each epoch's ``time/epoch_s`` in ``metrics.jsonl``
(validation included, the first epoch and process start-up left out), median over epochs. On a
2-core machine DDP's two processes share the cores that the 2-thread run uses, so this measures
trainwire's and gloo's overhead, not a speed-up. Nothing is targeted; the figures are reported.

    python benchmarks/ddp.py [--epochs 6] [--hidden 512] [--batch 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from _common import env, machine, python, run, table

TRAIN_SAMPLES = 1437  # the digits' training split at the default val_fraction


def epoch_times(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["time/epoch_s"] for line in lines if "time/epoch_s" in line][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="global batch (each DDP process gets half)")
    parser.add_argument("--quick", action="store_true", help="3 epochs")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs
    job = [f"trainer.max_epochs={epochs}", "lr.warmup_epochs=1", f"model.hidden=[{args.hidden},{args.hidden}]",
           "stopping=none", "log.format=json"]
    torchrun = os.path.join(os.path.dirname(python()), "torchrun")
    variants = {
        "1 process, 1 thread": ([python(), "-m", "trainwire", "train", f"data.batch_size={args.batch}"], "1"),
        "1 process, 2 threads": ([python(), "-m", "trainwire", "train", f"data.batch_size={args.batch}"], "2"),
        "DDP, 2 processes × 1 thread (gloo)": ([torchrun, "--standalone", "--nproc_per_node=2", "-m", "trainwire",
                                                 "train", "strategy=ddp", f"data.batch_size={args.batch // 2}"],
                                                "1"),
    }
    rows, base = [], None
    with tempfile.TemporaryDirectory() as folder:
        for name, (command, threads) in variants.items():
            run_dir = Path(folder) / f"run{len(rows)}"
            run([*command, *job, f"hydra.run.dir={run_dir}"], cwd=folder, env=env(OMP_NUM_THREADS=threads))
            times = epoch_times(run_dir)
            throughput = TRAIN_SAMPLES / statistics.median(times)
            base = base or throughput
            rows.append([name, f"{statistics.median(times):.3f}", f"{min(times):.3f}–{max(times):.3f}",
                         f"{throughput:,.0f}", f"{throughput / base:.2f}"])
    print(f"### DDP on CPU: {epochs} epochs, MLP 64→{args.hidden}→{args.hidden}→10, global batch {args.batch}\n")
    print(f"Machine: {machine()}\n")
    print(table(["run", "median epoch s", "min–max s", "train samples/s", "vs 1 process, 1 thread"], rows))


if __name__ == "__main__":
    main()
