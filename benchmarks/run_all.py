"""Runs every benchmark in this folder, one after the other, and prints their Markdown tables.

    python benchmarks/run_all.py            # full runs (about 10-15 minutes on 2 idle cores)
    python benchmarks/run_all.py --quick    # smoke runs
    python benchmarks/run_all.py --out benchmarks/results.md

``overhead.py`` (per-step overhead against a hand-written loop) runs too when it is present.
Each script measures its own baseline in the same run, so the ratios hold on the machine they
were taken on; the machine line (CPU, cores, load average) is printed with each table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["overhead.py", "startup.py", "memory.py", "checkpoint_io.py", "ddp.py"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    sections, failed = [], []
    for script in SCRIPTS:
        path = HERE / script
        if not path.exists():
            continue
        started = time.monotonic()
        print(f"# {script} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(path), *(["--quick"] if args.quick else [])],
                              capture_output=True, text=True, cwd=Path.cwd())
        if done.returncode != 0:
            failed.append(script)
            sections.append(f"### {script} failed ({done.returncode})\n\n```\n{done.stderr[-2000:]}\n```")
        else:
            sections.append(done.stdout.strip())
        print(f"# {script}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    report = "\n\n".join(sections) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
