"""tools/benchmark_msda.py under Triton's interpreter on the CPU (tiny shapes): every launch configuration gives the
current one's output and gradients, and so does the grid_sample reference (up to float32 rounding)."""

import json
import os
import subprocess
import sys

import pytest

from neo_rtdetr.modeling.decoder import ms_deform_attn_triton as msda

pytestmark = pytest.mark.skipif(not msda.triton_available(), reason="Triton is not installed")


def test_launch_configurations_agree_with_each_other_and_the_reference(tmp_path):
    out = tmp_path / "msda.json"
    cmd = [sys.executable, "tools/benchmark_msda.py", "--device", "cpu", "--launch", "16x4,32x8", "--batch", "1",
           "--queries", "5", "--heads", "2", "--head-dim", "4", "--levels", "3x4,2x2,1x1", "--points", "2",
           "--dtype", "fp32", "--warmup", "0", "--iters", "1", "--output", str(out)]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["what"]: r for r in json.loads(out.read_text())["rows"]}
    current = "triton %dx%d" % msda.launch_meta(4)
    assert set(rows) == {current, "triton 16x4", "triton 32x8", "grid_sample reference"}
    assert rows[current]["current"] and rows[current]["max_abs_diff"] == [0.0] * 4
    for name, row in rows.items():
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
        tolerance = 1e-5 if name == "grid_sample reference" else 1e-6  # (other arithmetic vs another grouping)
        assert max(row["max_abs_diff"]) < tolerance, (name, row["max_abs_diff"])


def test_refuses_the_cpu_without_the_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "tools/benchmark_msda.py", "--device", "cpu"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "need a CUDA device" in proc.stderr
