"""``benchmarks/peers.py --quick`` runs in CI, where Lightning and transformers are not installed, and says so."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.mark.slow
def test_the_quick_peers_benchmark_runs_and_names_what_it_skipped():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    measured = {tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in rows}
    expected = {(workload, runner) for workload in ("mlp", "cnn", "lm") for runner in ("hand-written", "trainwire")}
    assert expected <= measured
    for runner, module in (("lightning", "lightning"), ("hf-trainer", "transformers")):
        if importlib.util.find_spec(module) is None:
            assert f"{runner}: `{module}` is not importable, so it was skipped" in done.stdout
    assert "QUICK SMOKE RUN" in done.stdout
