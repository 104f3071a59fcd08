"""tools/soak_test.py, the CI variant: 100 training iterations of the tiny config with 2 data-loader
workers; after a 40-iteration warm-up the host memory (trainer + workers) and the trainer's open
file descriptors must stay flat. (The 1,000-iteration run is in docs/reliability.md.)"""

import json
import os
import subprocess
import sys

MAX_RSS_GROWTH_MIB = 64
MAX_FD_GROWTH = 0


def test_short_soak_keeps_memory_and_file_descriptors_flat(tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "tools/soak_test.py", "--iters", "100", "--warmup", "40", "--period", "20",
           "--workers", "2", "--cache-dir", str(tmp_path / "cache"), "--output", str(out),
           "--max-rss-growth-mib", str(MAX_RSS_GROWTH_MIB), "--max-fd-growth", str(MAX_FD_GROWTH),
           "dataloader.train.total_batch_size=2", "dataloader.train.multi_scale=[64]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout and "RSS total, MiB (trainer + workers)" in proc.stdout

    report = json.loads(out.read_text())
    summary, samples = report["summary"], report["samples"]
    assert summary["iterations"] == 100 and summary["measured_iterations"] == 60  # iterations 39 .. 99
    assert [s["iteration"] for s in samples] == [-1, 39, 59, 79, 99]
    assert summary["workers_start"] == summary["workers_end"] == 2  # persistent workers, none respawned
    assert summary["rss_total_growth_mib"] < MAX_RSS_GROWTH_MIB
    assert summary["fds_main_end"] - summary["fds_main_start"] <= MAX_FD_GROWTH
    assert summary["fds_workers_end"] == summary["fds_workers_start"]
    assert summary["shm_fds_main_peak"] <= 64  # tensors in transit: bounded by the batches in flight
    assert summary["rss_total_peak_mib"] >= summary["rss_total_end_mib"] > summary["rss_before_training_mib"]
    assert summary["seconds_per_iteration"] > 0
