"""LossTraceWriter / read_loss_trace: exact per-iteration losses, resumes and cut-off lines."""

import json

import pytest
import torch
from detectron2.engine import hooks
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import LinearParamScheduler

from neo_rtdetr.engine import RTDETRTrainer
from neo_rtdetr.engine.loss_trace import LossTraceWriter, read_loss_trace
from tests.engine.toy import ToyDetector, ToyLoader


def _train(path, start, end, nan_iters=()):
    model = ToyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = RTDETRTrainer(model, ToyLoader(nan_iters=nan_iters), optimizer, precision="fp32")
    trainer.register_hooks([hooks.LRScheduler(scheduler=LRMultiplier(optimizer, LinearParamScheduler(1.0, 0.5), 10)),
                            LossTraceWriter(str(path))])
    trainer.train(start, end)
    return trainer


def test_each_iteration_is_logged_with_raw_values(tmp_path):
    path = tmp_path / "trace.jsonl"
    _train(path, 0, 4, nan_iters=[2])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert [r["skipped"] for r in rows] == [False, False, True, False]
    for r in (rows[0], rows[1], rows[3]):
        assert r["total_loss"] == r["loss_mse"] + r["loss_l1"] and "grad_norm" in r
    assert "total_loss" not in rows[2]  # a skipped step writes no loss metrics
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.095, 0.09, 0.085], rel=1e-12)


def test_a_resume_appends_and_the_last_record_wins_after_a_cut_off_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    _train(path, 0, 3)
    with open(path, "a") as f:
        f.write('{"iteration": 3, "total_lo')  # the process was killed mid-line
    _train(path, 2, 4)  # resumed from the checkpoint of iteration 1
    records = read_loss_trace(str(path))
    assert sorted(records) == [0, 1, 2, 3]
    lines = path.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith('{"iteration": 2')) == 2 and records[3]["iteration"] == 3
