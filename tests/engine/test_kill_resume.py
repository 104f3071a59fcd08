"""Kill -9 in the middle of training, then --resume: the run continues exactly as if uninterrupted.

Runs tools/lazyconfig_train_net.py on the tiny synthetic config (CPU, one thread: deterministic),
with a checkpoint every epoch (4 iterations), strong augmentations and multi-scale switched off by
the stop-epoch policy at epoch 2 (iteration 8, after the resume point), EMA on, a data-loader
worker, and the exact per-iteration loss trace. The interrupted run is SIGKILLed as soon as its
first checkpoint is on disk; the resumed run must reproduce the uninterrupted run's losses and lr
bit for bit from the resume point on, and end with identical weights, EMA weights and optimizer
state. (The uninterrupted and the interrupted run run side by side to save time.)
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from neo_rtdetr.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from neo_rtdetr.engine.loss_trace import LOSS_TRACE_FILE, read_loss_trace

TOOL = [sys.executable, "tools/lazyconfig_train_net.py", "--config-file", "configs/rtdetr_tiny_synthetic_demo.py"]
MAX_ITER = 12
KILL_AFTER = "model_0000003.pth"  # the first checkpoint (iterations 0-3 done)
RESUME_AT = 4
STOP_EPOCH = 2  # iteration 8: no strong augmentations / multi-scale from there on


def _env():
    # one thread: CPU kernels are then bit-for-bit deterministic from one process to the next
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _args(out, cache):
    return [
        f"train.output_dir={out}",
        f"dataloader.datasets.0.cache_dir={cache}",
        "+dataloader.datasets.0.num_train=16",
        "+dataloader.datasets.0.num_val=4",
        "dataloader.train.num_workers=1",
        "dataloader.test.num_workers=0",
        "train.checkpoint_period_epochs=1",
        "train.eval_period_epochs=0",
        f"train.max_iter={MAX_ITER}",
        "train.loss_trace=True",
        "dataloader.image_size=[64,64]",
        "dataloader.train.multi_scale=[64,96]",
        f"dataloader.train.mapper.stop_strong_augmentation_epoch={STOP_EPOCH}",
    ]


def _start(args, flags=()):
    return subprocess.Popen(TOOL + list(flags) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), start_new_session=True)


def _finish(proc):
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-5000:]
    return log


def _kill_after_checkpoint(proc, out):
    """SIGKILL a training process once KILL_AFTER is tagged as its last checkpoint."""
    tag = os.path.join(out, "last_checkpoint")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.isfile(tag) and open(tag).read().strip() == KILL_AFTER:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed: " + proc.communicate()[0][-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a data-loader worker still in the session, if any
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    ensure_synthetic_dataset(cache, SyntheticSpec(num_train=16, num_val=4))  # once, before the runs start
    full = str(tmp_path_factory.mktemp("uninterrupted"))
    killed = str(tmp_path_factory.mktemp("killed"))
    uninterrupted = _start(_args(full, cache))
    interrupted = _start(_args(killed, cache))
    try:
        _kill_after_checkpoint(interrupted, killed)
        trace_before_resume = read_loss_trace(os.path.join(killed, LOSS_TRACE_FILE))
        resumed = _start(_args(killed, cache), flags=["--resume"])
        log = _finish(resumed)
        _finish(uninterrupted)
    finally:
        for proc in (uninterrupted, interrupted):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return full, killed, trace_before_resume, log


def test_resume_after_kill_continues_from_the_checkpoint(runs):
    _, killed, before, log = runs
    assert f"Loading from {os.path.join(killed, KILL_AFTER)}" in log.replace("[Checkpointer] ", "")
    assert f"data loader starts at iteration {RESUME_AT}" in log
    assert min(before) == 0 and max(before) >= RESUME_AT - 1  # the killed run had got at least to the checkpoint
    assert open(os.path.join(killed, "last_checkpoint")).read().strip() == "model_final.pth"


def test_resumed_loss_trace_equals_the_uninterrupted_run(runs):
    full, killed, _, _ = runs
    reference = read_loss_trace(os.path.join(full, LOSS_TRACE_FILE))
    resumed = read_loss_trace(os.path.join(killed, LOSS_TRACE_FILE))
    assert sorted(reference) == sorted(resumed) == list(range(MAX_ITER))
    for it in range(RESUME_AT, MAX_ITER):  # after the resume point: the same numbers, exactly
        ref, got = reference[it], resumed[it]
        assert set(ref) == set(got), it
        assert ref == got, (it, {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]})
    # the lr schedule continued (warm-up of 100 iterations: lr still rising) and the losses are real numbers
    lrs = [reference[it]["lr"] for it in range(MAX_ITER)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    assert all(torch.isfinite(torch.tensor(reference[it]["total_loss"])) for it in range(MAX_ITER))


def test_final_weights_ema_and_optimizer_state_are_identical(runs):
    full, killed, _, _ = runs
    a = torch.load(os.path.join(full, "model_final.pth"), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(killed, "model_final.pth"), map_location="cpu", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == MAX_ITER - 1
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), k
    assert a["ema"]["updates"] == b["ema"]["updates"] == MAX_ITER
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k
    for pid, state in a["trainer"]["optimizer"]["state"].items():
        for name, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["trainer"]["optimizer"]["state"][pid][name])), (pid, name)
    assert a["trainer"]["hooks"] == b["trainer"]["hooks"]  # LR scheduler and step-seed state
