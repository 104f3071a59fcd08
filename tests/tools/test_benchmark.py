"""tools/benchmark.py on the CPU with the tiny model: every row it promises is measured and written to JSON, the
profiler table names the step's phases, and --baseline-json pairs each row with the earlier run's. (GPU numbers: docs/performance.md.)"""

import json
import os
import subprocess
import sys


def _run(tmp_path, *extra, env=None):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "tools/benchmark.py", "--config-file", "configs/common/models/rtdetr_tiny.py",
           "--sizes", "64x96", "--train-batch", "2", "--warmup", "1", "--iters", "1", "--infer-batches", "1,2",
           "--precisions", "fp32", "--modes", "eager,fast,fast_net", "--output", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_rows_json_profile_and_baseline_ratios(tmp_path):
    profile = tmp_path / "profile.txt"
    first, stdout = _run(tmp_path, "--train-variants", "default,pytorch_msda,trainer", "--profile-train", str(profile))
    rows = first["rows"]
    names = {(r["what"], r["batch"]) for r in rows}
    assert names == {("train step (default)", 2), ("train step (pytorch_msda)", 2), ("train step (trainer)", 2),
                     *((f"ours {m}", b) for m in ("eager", "fast", "fast net") for b in (1, 2))}
    assert all(r["img_per_s"] > 0 and r["ms_per_batch"] > 0 and r["size"] == "64x96" for r in rows)
    table = profile.read_text()
    for phase in ("## backbone", "## encoder", "## decoder", "## criterion", "## backward", "## clip + optimizer"):
        assert phase in table and phase in stdout
    # the trainer variant steps through RTDETRTrainer and its hooks: its profile has the trainer's phases (host
    # transfer of the losses, the EMA update), which the bare step's has not
    bare, trainer = table.split("==== trainer bf16 64x96: per step")
    bare_summary = bare.split("==== default bf16 64x96: 3 steps")[0]
    for phase in ("## data", "## forward", "## host transfer", "## optimizer", "## ema update"):
        assert phase in trainer and phase not in bare_summary, phase
    assert "## backbone" in trainer.split("sorted by")[0]  # the model's parts too

    baseline = tmp_path / "base.json"
    # an older script's JSON named the eager inference row "ours inference": it still pairs with "ours eager"
    old_row = {**next(r for r in rows if r["what"] == "ours eager" and r["batch"] == 1), "what": "ours inference"}
    rows_for_baseline = [r for r in rows if not (r["what"] == "ours eager" and r["batch"] == 1)] + [old_row]
    baseline.write_text(json.dumps({**first, "rows": rows_for_baseline}))
    second, _ = _run(tmp_path, "--skip-train", "--baseline-json", str(baseline))
    before = {(r["what"], r["batch"]): r["img_per_s"] for r in rows}
    assert len(second["rows"]) == 6
    for r in second["rows"]:  # each row carries the earlier run's number for the same row
        assert r["baseline_img_per_s"] == before[(r["what"], r["batch"])]


def test_accuracy_mode_compares_every_path_with_eager_fp32(tmp_path):
    """--accuracy-*: one pass per path feeds both COCO AP and the agreement with the fp32 eager model. On the CPU the
    float32 fast path computes the model's function, so it reproduces every reference detection (an untrained
    model's near-ties make the bf16 agreement meaningless here; the GPU numbers come from trained checkpoints)."""
    import torch

    from detectron2.config import LazyConfig, instantiate

    config = "configs/rtdetr_tiny_synthetic_demo.py"
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    torch.save({"model": instantiate(LazyConfig.load(config).model).state_dict()}, ckpt)
    result, stdout = _run(tmp_path, "--skip-train", "--skip-infer", "--accuracy-config", config,
                          "--accuracy-checkpoint", str(ckpt), "--accuracy-max-images", "8",
                          env={"NEO_RTDETR_CACHE": str(tmp_path / "cache")})
    acc = result["accuracy"]
    assert result["accuracy_config"] == config and result["accuracy_checkpoint"] == str(ckpt)
    assert set(acc) == {"eager fp32", "eager bf16 autocast", "fast bf16", "fast fp32"}
    assert acc["eager fp32"]["agreement_top100"] == 1.0 and acc["fast fp32"]["agreement_top100"] == 1.0
    assert all(0.0 <= r["AP"] <= 100.0 for r in acc.values())
    assert "8 images" in stdout
