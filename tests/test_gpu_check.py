"""``benchmarks/gpu_check.py --dry-run`` keeps working on the CPU, so the one GPU run is not its first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _rows(report: str) -> dict[str, list[str]]:
    """The table's rows by their number (the first cell), each as its cells."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_the_dry_run_prints_the_six_rows_and_exits_0(tmp_path):
    out = tmp_path / "report.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert sorted(rows) == ["1", "2", "3", "4", "5", "6"], done.stdout
    for number, cells in rows.items():
        assert len(cells) == 6, cells
        assert not any("ERROR" in cell for cell in cells), cells
    assert "DRY RUN" in done.stdout
    # Each row measured what it says, with the dry run's stand-ins named.
    assert "ratio" in rows["1"][4] and "nonfinite=off" in rows["1"][3]
    assert "no CUDA: both ran fp32" in rows["2"][4]
    assert rows["3"][5].startswith("skipped: no CUDA") and "PASS with the stand-in" in rows["3"][5]
    # The default non-finite guard reads the grad norm on every step, and the harness names where.
    assert "nonfinite=skip: 6 on 6 non-logging steps (6× trainwire/policies/gradients.py" in rows["3"][4]
    assert "eager backend" in rows["4"][1] and "ratio" in rows["4"][4]
    assert "mode: " in rows["5"][3] and "torch.save from CPU" in rows["5"][2]
    assert "counted FLOPs / analytic" in rows["6"][4]
    assert out.read_text().strip() == done.stdout.strip()
