"""The benchmark suite runs: ``fjord-bench smoke`` (a few seconds of every scenario against brokers
it starts itself) produces a full table without errors. The figures are not asserted here;
bench/run reports them (bench/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT


@pytest.mark.timeout(180)
def test_bench_smoke(fjord_bin: Path):
    bench = Path(os.environ.get("FJORD_BENCH_BIN", REPO_ROOT / "target" / "release" / "fjord-bench"))
    assert bench.exists(), f"{bench} missing: cargo build --release -p fjord-bench"
    out = subprocess.run([str(bench), "--fjord", str(fjord_bin), "smoke"], capture_output=True,
                         text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    scenarios = [row.split("|")[1].strip() for row in rows[1:]]
    assert scenarios == ["produce throughput", "produce latency", "fan-out reads",
                         "idle connections"], out.stdout
    assert "NaN" not in out.stdout, out.stdout
