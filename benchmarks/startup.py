"""Start-up: from process start to the end of the first optimizer step.

Three programs train the same model (the default MLP 64→128→10, AdamW) on the bundled digits:

* baseline — a script that only imports torch, builds the model and the optimizer, and steps
  once on a batch of the same shape;
* Python API — ``run(compose([...]))`` from ``trainwire.containers``;
* CLI — ``trainwire train`` (through ``trainwire.cli.main.main``, as the console script does).

Each is a fresh ``python`` process; a global optimizer step hook (``torch.optim.optimizer.
register_optimizer_step_post_hook``) prints ``time.time()`` after the first step and exits, so
the time is spawn → first step. Rounds are interleaved (baseline, API, CLI, ...). Targets: API
≤ baseline + 0.5 s, CLI ≤ baseline + 1.0 s. A benchmark, not a test: it prints PASS/MISS.

    python benchmarks/startup.py [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import env, machine, median_spread, python, run, table

HOOK = """
import os, sys, time, torch
from torch.optim.optimizer import register_optimizer_step_post_hook
def _first_step(optimizer, args, kwargs):
    print(f"FIRST_STEP {time.time():.6f}", flush=True)
    os._exit(0)
register_optimizer_step_post_hook(_first_step)
"""

BASELINE = HOOK + """
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand(64, 64), torch.randint(0, 10, (64,))
loss = nn.functional.cross_entropy(model(x), y)
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
optimizer.step()
"""

API = HOOK + """
from trainwire.config import compose
from trainwire.containers import run
run(compose([f"run_dir={sys.argv[1]}"]))
"""

CLI = HOOK + """
from trainwire.cli.main import main
sys.argv = ["trainwire", "train", f"hydra.run.dir={sys.argv[1]}", "log.format=json"]
main()
"""

PROGRAMS = {"baseline (import torch, build, step)": BASELINE, "Python API": API, "CLI": CLI}
TARGETS = {"Python API": 0.5, "CLI": 1.0}


def once(source: str, workdir: Path) -> float:
    started = time.time()
    done = run([python(), "-c", source, str(workdir / f"run-{time.monotonic_ns()}")], cwd=workdir, env=env())
    stamp = next(line for line in done.stdout.splitlines() if line.startswith("FIRST_STEP"))
    return float(stamp.split()[1]) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    times: dict[str, list[float]] = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory() as folder:
        for name, source in PROGRAMS.items():  # warm the page cache once, untimed
            once(source, Path(folder))
        for _ in range(rounds):
            for name, source in PROGRAMS.items():
                times[name].append(once(source, Path(folder)))
    base = median_spread(times["baseline (import torch, build, step)"])[0]
    rows = []
    for name, values in times.items():
        median, low, high = median_spread(values)
        extra = median - base
        verdict = ""
        if name in TARGETS:
            verdict = f"≤ +{TARGETS[name]:.1f} s: {'PASS' if extra <= TARGETS[name] else 'MISS'}"
        rows.append([name, f"{median:.2f}", f"{low:.2f}–{high:.2f}", f"{extra:+.2f}", f"{median / base:.2f}", verdict])
    print(f"### Start-up: process start → first optimizer step ({rounds} rounds, median)\n")
    print(f"Machine: {machine()}\n")
    print(table(["program", "median s", "min–max s", "vs baseline s", "ratio", "target"], rows))


if __name__ == "__main__":
    main()
