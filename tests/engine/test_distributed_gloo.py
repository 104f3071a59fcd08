"""Two CPU processes on the gloo backend run the real training entry point (``do_train``: RTDETRTrainer, DDP
through detectron2's ``create_ddp_model``, EMA, checkpoint/eval/writer hooks) on a tiny RT-DETR, including a
step where one rank's batch has no box while the other's has many.

The test spawns the two processes itself (detectron2 v0.6's ``launch`` needs CUDA and NCCL); each runs
``tests/engine/ddp_gloo_worker.py``, which sets up ``comm`` as ``launch`` would and records facts; the job
runs once per module (about a minute on one core per rank) and the tests below assert on its report.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD_SIZE = 2
TOTAL_BATCH = 4  # 2 images per rank
NUM_TRAIN = 8  # 2 iterations per epoch
MAX_ITER = 6  # 3 epochs
STOP_EPOCH = 1  # strong augmentations and multi-scale in epoch 0 only
EMPTY_ITER = 2  # first iteration of epoch 1: rank 1 gets two images without any box
STRONG_AUGS = {"RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop"}
JOB_TIMEOUT_S = 300  # a hang fails the test after this long (the job itself takes about a minute)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_train_set(synthetic_root: str, out_dir: str) -> str:
    """8 images of the synthetic train split, ordered so that at ``EMPTY_ITER`` rank 0 gets the two images
    with the most boxes and rank 1 two images whose annotations are removed."""
    from neo_rtdetr.data.build import epoch_permutation
    from neo_rtdetr.data.synthetic import synthetic_paths

    with open(synthetic_paths(synthetic_root, "train")[0]) as f:
        coco = json.load(f)
    anns = defaultdict(list)
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    by_count = sorted(coco["images"], key=lambda im: (-len(anns[im["id"]]), im["id"]))
    rich, rest = by_count[:2], by_count[2:]
    assert len(anns[rich[1]["id"]]) >= 5, "the synthetic set should have images with several boxes"
    # detectron2 orders a COCO json's images by id: dataset index i <-> new image id i + 1
    epoch = EMPTY_ITER // (NUM_TRAIN // TOTAL_BATCH)
    perm = epoch_permutation(0, epoch, NUM_TRAIN).tolist()  # train.seed = 0
    slot = {perm[0]: ("keep", rich[0]), perm[1]: ("keep", rich[1])}
    slot[perm[2]] = ("strip", rest[0])
    slot[perm[3]] = ("strip", rest[1])
    others = iter(im for im in rest[2:] if anns[im["id"]])
    for i in range(NUM_TRAIN):
        slot.setdefault(i, ("keep", next(others)))
    images, annotations = [], []
    for i in range(NUM_TRAIN):
        what, im = slot[i]
        images.append({**im, "id": i + 1})
        if what == "keep":
            for a in anns[im["id"]]:
                annotations.append({**a, "id": len(annotations) + 1, "image_id": i + 1})
    path = os.path.join(out_dir, "gloo_train.json")
    with open(path, "w") as f:
        json.dump({**coco, "images": images, "annotations": annotations}, f)
    return path


def _tail(path: str, n: int = 6000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def _run_job(spec_path: str, log_dir: str) -> None:
    """Start the two ranks, wait for both; on a failure or a hang kill both and fail with their logs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependency on the host name resolving
    for attempt in range(2):  # a port taken between _free_port and the bind: retry once
        url = f"tcp://127.0.0.1:{_free_port()}"
        logs = [os.path.join(log_dir, f"rank{r}_try{attempt}.log") for r in range(WORLD_SIZE)]
        procs = []
        try:
            for r in range(WORLD_SIZE):
                cmd = [sys.executable, "-m", "tests.engine.ddp_gloo_worker", "--rank", str(r),
                       "--world-size", str(WORLD_SIZE), "--dist-url", url, "--spec", spec_path]
                with open(logs[r], "w") as log:
                    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while True:
                codes = [p.poll() for p in procs]
                if all(c == 0 for c in codes):
                    return
                failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    text = "\n".join(f"----- rank {r} (exit {codes[r]}) -----\n{_tail(logs[r])}" for r in failed)
                    if attempt == 0 and "address already in use" in text.lower():
                        break
                    pytest.fail(f"a rank failed:\n{text}")
                if time.monotonic() > deadline:
                    text = "\n".join(f"----- rank {r} -----\n{_tail(logs[r])}" for r in range(WORLD_SIZE))
                    pytest.fail(f"the 2-process job did not finish in {JOB_TIMEOUT_S} s (hang?):\n{text}")
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)  # the session the test started for this rank
                p.wait()
    pytest.fail("could not bind a free localhost port twice in a row")


@pytest.fixture(scope="module")
def job(synthetic_root, tmp_path_factory):
    from neo_rtdetr.data.synthetic import synthetic_paths

    out = str(tmp_path_factory.mktemp("gloo_job"))
    val_json, val_root = synthetic_paths(synthetic_root, "val")
    spec = {
        "config": "configs/rtdetr_tiny_synthetic_demo.py",
        "datasets": [
            {"name": "gloo_train", "json_file": _write_train_set(synthetic_root, out),
             "image_root": synthetic_paths(synthetic_root, "train")[1]},
            {"name": "gloo_val", "json_file": val_json, "image_root": val_root},
        ],
        "train_name": "gloo_train",
        "val_name": "gloo_val",
        "total_batch_size": TOTAL_BATCH,
        "max_iter": MAX_ITER,
        "stop_epoch": STOP_EPOCH,
        "collective_timeout_s": 120,
        "out": out,
        "report": os.path.join(out, "report.json"),
    }
    spec_path = os.path.join(out, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    start = time.monotonic()
    _run_job(spec_path, out)
    with open(spec["report"]) as f:
        report = json.load(f)
    report["wall_s"] = time.monotonic() - start
    report["spec"] = spec
    with open(val_json) as f:
        report["val_image_ids"] = sorted(im["id"] for im in json.load(f)["images"])
    return report


def _steps(job):
    """{iteration: [rank 0's record, rank 1's record]}"""
    ranks = job["ranks"]
    out = defaultdict(list)
    for r in ranks:
        for s in r["train"]["steps"]:
            out[s["iter"]].append(s)
    return dict(out)


def test_ranks_are_set_up_like_detectron2_launch(job):
    assert [r["rank"] for r in job["ranks"]] == [0, 1]
    assert all(r["world_size"] == WORLD_SIZE for r in job["ranks"])
    assert [r["local_rank"] for r in job["ranks"]] == [0, 1]  # comm._LOCAL_PROCESS_GROUP as launch makes it
    assert all(r["train"]["wrapper"] == "DistributedDataParallel" for r in job["ranks"])


def test_parameters_stay_identical_on_both_ranks_after_every_step(job):
    steps = _steps(job)
    assert sorted(steps) == list(range(MAX_ITER)) and all(len(v) == WORLD_SIZE for v in steps.values())
    for it, recs in steps.items():
        for s in recs:
            assert not s["skipped"], f"iteration {it} was skipped (non-finite)"
            assert s["param_max_change"] > 0, f"iteration {it}: the optimizer did not move the parameters"
            assert s["param_max_diff_across_ranks"] == 0.0, f"iteration {it}: ranks diverged"


def test_per_rank_batch_is_total_over_world_size(job):
    for r in job["ranks"]:
        assert r["train"]["per_rank_batch_size"] == TOTAL_BATCH // WORLD_SIZE
        assert r["train"]["iters_per_epoch"] == NUM_TRAIN // TOTAL_BATCH
    for it, (s0, s1) in sorted(_steps(job).items()):
        assert s0["batch_size"] == s1["batch_size"] == TOTAL_BATCH // WORLD_SIZE
        assert not set(s0["image_ids"]) & set(s1["image_ids"]), f"iteration {it}: ranks share images"


def test_num_boxes_is_the_cross_rank_average(job):
    for it, (s0, s1) in sorted(_steps(job).items()):
        expected = max(1.0, (s0["local_boxes"] + s1["local_boxes"]) / WORLD_SIZE)
        assert s0["num_boxes"] == s1["num_boxes"] == pytest.approx(expected), f"iteration {it}"
    s0, s1 = _steps(job)[EMPTY_ITER]
    assert s0["local_boxes"] != s1["local_boxes"]  # so the average is not trivially the local count


def test_a_rank_without_boxes_runs_the_same_graph_and_does_not_hang(job):
    s0, s1 = _steps(job)[EMPTY_ITER]
    assert s1["local_boxes"] == 0 and s0["local_boxes"] >= 10, "test set-up: rank 1 empty, rank 0 many boxes"
    # rank 1 still builds a denoising group (one padded positive + negative query); rank 0 builds
    # num_denoising // max_gt groups of 2 * max_gt queries: shapes differ, which DDP allows ...
    assert s1["dn_num_group"] == 1 and s1["dn_num_split"][0] == 2 and s1["dn_queries_out"] == 2
    assert s0["dn_num_group"] >= 1 and s0["dn_num_split"][0] == s0["dn_queries_out"] > 2
    # ... because the graph is the same: every trainable parameter gets a gradient on every rank, every step
    for it, recs in sorted(_steps(job).items()):
        for r, s in enumerate(recs):
            assert s["grad_params_missing"] == [], f"iteration {it}, rank {r}: no gradient for {s['grad_params_missing']}"
        assert recs[0]["loss_keys"] == recs[1]["loss_keys"], f"iteration {it}: different loss terms"
        assert any("_dn_" in k for k in recs[0]["loss_keys"])
    assert job["ranks"][0]["train"]["num_trainable"] == job["ranks"][1]["train"]["num_trainable"] > 100


def test_only_rank0_writes_checkpoints_metrics_and_eval_files(job):
    r0, r1 = (r["train"] for r in job["ranks"])
    assert r1["files"] == []  # rank 1's output folder stays empty
    assert {"model_final.pth", "last_checkpoint", "metrics.json", "coco_instances_results.json"} <= set(r0["files"])
    assert {"model", "ema", "trainer"} <= set(r0["final_checkpoint_keys"])
    assert r0["final_checkpoint_ema_updates"] == MAX_ITER
    e0, e1 = (r["eval"] for r in job["ranks"])
    assert e1["files"] == [] and "coco_instances_results.json" in e0["files"]


def test_ema_is_updated_identically_on_both_ranks(job):
    for r in job["ranks"]:
        assert r["train"]["ema_updates"] == MAX_ITER
        assert r["train"]["ema_param_max_diff_across_ranks"] == 0.0
        assert r["train"]["ema_differs_from_model"] > 0  # a real average, not a copy of the weights


def test_evaluation_is_gathered_on_rank0_and_matches_a_single_process(job):
    import torch

    e0, e1 = (r["eval"] for r in job["ranks"])
    single = job["single_process_eval"]
    val_ids = job["val_image_ids"]
    # each rank ran its own half of the val set; the single process ran all of it
    assert len(e0["local_image_ids"]) == len(e1["local_image_ids"]) == len(val_ids) // 2
    assert sorted(e0["local_image_ids"] + e1["local_image_ids"]) == val_ids
    assert sorted(single["local_image_ids"]) == val_ids
    # the COCO result exists on rank 0 only and equals the single-process one
    assert e1["results"] == {}
    bbox, ref = e0["results"]["bbox"], single["results"]["bbox"]
    assert set(bbox) == set(ref) and "AP" in bbox
    for k in ref:
        assert (math.isnan(bbox[k]) and math.isnan(ref[k])) or bbox[k] == pytest.approx(ref[k], abs=1e-9), k
    # the gathered predictions cover every image and equal the single-process predictions
    out = job["spec"]["out"]
    gathered = torch.load(os.path.join(out, "eval_dist_rank0", "instances_predictions.pth"), weights_only=False)
    alone = torch.load(os.path.join(out, "eval_single", "instances_predictions.pth"), weights_only=False)
    assert sorted(p["image_id"] for p in gathered) == sorted(p["image_id"] for p in alone) == val_ids
    alone = {p["image_id"]: p["instances"] for p in alone}
    for p in gathered:
        a, b = p["instances"], alone[p["image_id"]]
        assert len(a) == len(b) > 0
        key = lambda d: (-d["score"], d["category_id"], d["bbox"])  # noqa: E731
        for x, y in zip(sorted(a, key=key), sorted(b, key=key)):
            assert x["category_id"] == y["category_id"]
            assert x["score"] == pytest.approx(y["score"], abs=1e-5)
            assert x["bbox"] == pytest.approx(y["bbox"], abs=1e-3)
    # the end-of-training evaluation inside do_train was gathered the same way
    assert job["ranks"][0]["train"]["storage_bbox_keys"] and job["ranks"][1]["train"]["storage_bbox_keys"] == []


def test_stop_epoch_policy_switches_on_both_ranks(job):
    for it, recs in sorted(_steps(job).items()):
        epoch = it // (NUM_TRAIN // TOTAL_BATCH)
        for r, s in enumerate(recs):
            assert s["epochs"] == [epoch]
            assert len(s["augmentations"]) == s["batch_size"]
            for aug_epoch, names in s["augmentations"]:
                assert aug_epoch == epoch
                if epoch < STOP_EPOCH:
                    assert STRONG_AUGS <= set(names), f"iteration {it}, rank {r}: {names}"
                else:
                    assert not STRONG_AUGS & set(names), f"iteration {it}, rank {r}: {names}"
            if epoch >= STOP_EPOCH:
                assert s["image_hw"] == [[64, 64]]  # multi-scale stopped too
        assert recs[0]["image_hw"] == recs[1]["image_hw"]  # the multi-scale size is the same on both ranks


def test_sync_bn_is_converted_under_two_ranks_and_cpu_limits_are_explicit(job):
    for r in job["ranks"]:
        res = r["sync_bn"]
        assert res["norm_layers"].get("SyncBatchNorm", 0) > 10
        assert "BatchNorm2d" not in res["norm_layers"]
        assert res["eval_forward_boxes"] == 50  # eval mode needs no communication: runs on CPU
        assert res["do_train_error"] and "train.sync_bn=True needs CUDA" in res["do_train_error"]


def test_a_total_batch_not_divisible_by_the_world_size_is_a_clear_error(job):
    for r in job["ranks"]:
        assert "total_batch_size (3) must be a positive multiple of the world size (2)" in r["indivisible_batch"]["error"]

