"""Runs tests/js/roundtrip.js (kafkajs: createTopics, produce 1,000
messages, fetchTopicOffsets, a consumer group, deleteTopicRecords) against a broker; see that file
for the checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def test_kafkajs_produce_and_offsets(broker, topic):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH: run .ci/run (or scripts/setup-test-env.sh)",
                    pytrace=False)
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail(f"{JS_DIR}/node_modules/kafkajs missing: run .ci/run "
                    "(or scripts/setup-test-env.sh) to npm-install it", pytrace=False)

    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    try:
        res = subprocess.run(
            [node, str(JS_DIR / "roundtrip.js"), broker.bootstrap, topic],
            cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=180,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"roundtrip.js did not finish in 180 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    print(res.stdout)
    assert res.returncode == 0, (
        f"roundtrip.js exited with {res.returncode}\n"
        f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-8000:]}"
    )
