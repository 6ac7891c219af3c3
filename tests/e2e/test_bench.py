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


@pytest.mark.timeout(180)
def test_bench_gateway_short_run(fjord_bin: Path):
    """``fjord-bench gateway`` with tiny counts (and no results file) finishes and reports both
    paths and the comparison; the performance targets are bench/run's business, not asserted."""
    bench = Path(os.environ.get("FJORD_BENCH_BIN", REPO_ROOT / "target" / "release" / "fjord-bench"))
    assert bench.exists(), f"{bench} missing: cargo build --release -p fjord-bench"
    out = subprocess.run(
        [str(bench), "--fjord", str(fjord_bin), "gateway", "--messages", "4000", "--batch", "200",
         "--callers", "4", "--rate", "500", "--seconds", "2"],
        capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    scenarios = [row.split("|")[1].strip() for row in rows[1:]]
    assert scenarios == ["gateway: direct", "gateway: via gateway", "gateway: vs direct"], out.stdout
    for row in rows[1:3]:
        assert "msgs/s" in row and "p99" in row, row
    assert "% of direct" in rows[3] and "added p99" in rows[3], rows[3]
    assert "NaN" not in out.stdout, out.stdout


@pytest.mark.timeout(120)
def test_bench_soak_short_run(fjord_bin: Path):
    """``fjord-bench soak`` for a few seconds (issue 15, item 7) samples the broker over time:
    every row has the figures a soak is read by, the samples are in time order and the records
    produced are acknowledged. The bounds themselves are bench/run's to report."""
    import json

    bench = Path(os.environ.get("FJORD_BENCH_BIN", REPO_ROOT / "target" / "release" / "fjord-bench"))
    assert bench.exists(), f"{bench} missing: cargo build --release -p fjord-bench"
    out = subprocess.run(
        [str(bench), "--fjord", str(fjord_bin), "--json", "soak", "--minutes", "0.1",
         "--interval-s", "2", "--retention-ms", "1000", "--rate-mb", "1", "--topics", "2",
         "--partitions", "2", "--compacted-keys", "50", "--idle-s", "3"],
        capture_output=True, text=True, timeout=110,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) >= 4, out.stdout
    assert all(r["scenario"] == "soak" for r in rows)
    for r in rows:
        assert set(r["values"]) >= {"seconds", "acked", "rss_bytes", "metadata_bytes", "objects",
                                    "object_bytes", "puts", "gets", "deletes", "lists",
                                    "index_rows", "ledger_objects", "retention_passes",
                                    "retention_pass_ms"}, r
    seconds = [r["values"]["seconds"] for r in rows]
    assert seconds == sorted(seconds), seconds
    last = rows[-1]["values"]
    assert last["acked"] > 1000 and last["puts"] > 0 and last["rss_bytes"] > 0, last
    assert last["metadata_bytes"] > 0, last


@pytest.mark.timeout(180)
def test_bench_security_short_run(fjord_bin: Path):
    """``fjord-bench security`` with small runs: a row per listener (PLAINTEXT, SSL, SASL_SSL
    with SCRAM-SHA-512) with throughput, CPU and latency figures, and the broker counted SCRAM
    authentications, so the SASL_SSL row was measured over SASL. The figures themselves are
    bench/run's to report."""
    import json

    bench = Path(os.environ.get("FJORD_BENCH_BIN", REPO_ROOT / "target" / "release" / "fjord-bench"))
    assert bench.exists(), f"{bench} missing: cargo build --release -p fjord-bench"
    out = subprocess.run(
        [str(bench), "--fjord", str(fjord_bin), "--json", "security", "--mb", "8",
         "--partitions", "3", "--rate-mb", "1", "--seconds", "2"],
        capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in rows] == [
        "security: PLAINTEXT", "security: SSL", "security: SASL_SSL", "security: authentications",
    ], out.stdout
    for r in rows[:3]:
        v = r["values"]
        assert v["mb_per_s"] > 0 and v["broker_cpu_s_per_gb"] > 0, r
        assert 0 < v["ack_p50_ms"] <= v["ack_p99_ms"], r
    assert rows[0]["values"]["share_of_plaintext_pct"] == 100, rows[0]
    assert rows[3]["values"]["sasl_successes"] >= 1, rows[3]
    assert "NaN" not in out.stdout, out.stdout
