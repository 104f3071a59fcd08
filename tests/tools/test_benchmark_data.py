"""tools/benchmark_data.py on the CPU with the tiny demo config: one row per worker count, with the loader's rate and
the training process's own CPU time per batch, written to JSON."""

import json
import os
import subprocess
import sys


def test_rows_per_worker_count_with_the_process_cpu_time(tmp_path):
    out = tmp_path / "data.json"
    cmd = [sys.executable, "tools/benchmark_data.py", "--config-file", "configs/rtdetr_tiny_synthetic_demo.py",
           "--workers", "0,1", "--batches", "3", "--warmup", "1", "--output", str(out),
           "--sharing-strategy", "file_system",
           f"dataloader.datasets.0.cache_dir={tmp_path / 'cache'}", "+dataloader.datasets.0.num_train=16",
           "+dataloader.datasets.0.num_val=4", "dataloader.image_size=[64,64]", "dataloader.train.multi_scale=[64]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batch_size"] == 4 and [r["workers"] for r in result["rows"]] == [0, 1]
    assert result["sharing_strategy"] == "file_system"  # (torch's default on Linux: file_descriptor)
    for r in result["rows"]:
        assert r["img_per_s"] > 0 and r["ms_per_batch"] > 0 and r["main_cpu_ms_per_batch"] > 0
        assert r["warmup_batches"] == 1 + 2 * r["workers"]  # the workers' first wave is not timed
        assert abs(r["img_per_s"] * r["ms_per_batch"] / 1e3 - result["batch_size"]) < 1e-6 * result["batch_size"]
    # with no workers the process maps every sample itself: its CPU time is most of the batch time
    main = result["rows"][0]
    assert main["main_cpu_ms_per_batch"] > 0.3 * main["ms_per_batch"]
    assert "training process CPU" in proc.stdout
