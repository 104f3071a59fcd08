"""One rank of the 2-process CPU (gloo) job of ``tests/engine/test_distributed_gloo.py``; not a test module.

Run by the test as ``python -m tests.engine.ddp_gloo_worker --rank R --world-size 2 --dist-url tcp://...
--spec spec.json`` from the repository root. The worker sets up ``torch.distributed`` and detectron2's
``comm`` the way detectron2 v0.6's ``launch`` / ``_distributed_worker`` does (that code asserts CUDA and
NCCL, so it cannot be used on CPU), then runs the real training entry point ``do_train`` (RTDETRTrainer,
DDP via ``create_ddp_model``, EMA, checkpoint/eval/writer hooks) on a tiny config and records facts; the
test process makes the assertions. Rank 0 writes the gathered records to ``spec["report"]`` (JSON).

Phases:
    1. training: ``do_train`` with an instrumented ``RTDETRTrainer`` that, after every step, gathers the
       parameters of both ranks and records the batch, ``num_boxes``, the denoising groups, the loss
       terms and which parameters received a gradient on this rank;
    2. evaluation: both ranks load rank 0's final checkpoint and run ``do_test`` (COCOEvaluator gathers
       the predictions on rank 0); after the process group is gone, rank 0 evaluates again alone;
    3. SyncBN: ``build_model`` with ``train.sync_bn`` under the 2-rank group, and what runs on CPU;
    4. a total batch size that the world size does not divide.
"""

import argparse
import datetime
import json
import os
import sys
import traceback
from typing import Dict, List


def _init_distributed(rank: int, world_size: int, dist_url: str, timeout_s: float) -> None:
    """``init_process_group`` + detectron2's per-machine process group, as v0.6's ``_distributed_worker``
    does after its CUDA asserts (one machine holding every rank)."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    torch.set_num_threads(1)
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=rank,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    assert comm._LOCAL_PROCESS_GROUP is None
    num_machines, per_machine, machine_rank = 1, world_size, 0
    for i in range(num_machines):
        pg = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    comm.synchronize()


def _tiny_cfg(spec: Dict, output_dir: str):
    """The tiny CPU demo config, shrunk further, on the test's own COCO-format train/val sets."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig

    from neo_rtdetr.data.catalog import register_coco_format_dataset

    cfg = LazyConfig.load(spec["config"])
    cfg.dataloader.datasets = [
        L(register_coco_format_dataset)(name=d["name"], json_file=d["json_file"], image_root=d["image_root"])
        for d in spec["datasets"]
    ]
    cfg.dataloader.train.dataset.names = spec["train_name"]
    cfg.dataloader.test.dataset.names = spec["val_name"]
    cfg.dataloader.image_size = [64, 64]
    cfg.dataloader.train.multi_scale = [64, 96]
    cfg.dataloader.train.total_batch_size = spec["total_batch_size"]
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.mapper.stop_strong_augmentation_epoch = spec["stop_epoch"]
    cfg.dataloader.train.multi_scale_stop_epoch = spec["stop_epoch"]
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.test.batch_size = 2
    cfg.train.output_dir = output_dir
    cfg.train.device = "cpu"
    cfg.train.sync_bn = False  # PyTorch's SyncBatchNorm does not run on CPU (phase 3)
    cfg.train.max_iter = spec["max_iter"]
    cfg.train.eval_period_epochs = 0  # evaluate once, at the end
    cfg.train.checkpoint_period_epochs = 100  # only model_final
    cfg.train.log_period = 1
    cfg.train.ema.warmups = 1
    cfg.lr_multiplier.warmup_iters = 1
    return cfg


def _flat_params(module) -> "torch.Tensor":
    import torch

    return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])


def _max_diff_across_ranks(t) -> float:
    """All-gather ``t`` and return the largest absolute difference between any rank's copy and this one."""
    import torch
    import torch.distributed as dist

    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return max(float((g - t).abs().max()) for g in gathered)


def _make_instrumented_trainer():
    import torch
    from neo_rtdetr.engine.ema import EMAHook, unwrap_model
    from neo_rtdetr.engine.trainer import RTDETRTrainer

    class InstrumentedTrainer(RTDETRTrainer):
        """RTDETRTrainer that records, around every real ``run_step``, what the test asserts."""

        last = None

        def __init__(self, model, data_loader, optimizer, **kwargs):
            super().__init__(model, data_loader, optimizer, **kwargs)
            InstrumentedTrainer.last = self
            self.records: List[Dict] = []
            self._cur: Dict = {}
            self.wrapper_type = type(model).__name__
            net = unwrap_model(model)
            self.trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
            # Which parameters receive a gradient from this rank's own graph (tensor hooks fire when autograd
            # computes the leaf's gradient, before DDP's reducer averages it).
            for name, p in net.named_parameters():
                if p.requires_grad:
                    p.register_hook(self._grad_seen(name))
            model.register_forward_pre_hook(self._on_batch)
            crit = net.criterion
            orig_num_boxes, orig_forward = crit._num_boxes, crit.forward

            def num_boxes(targets, *args, **kwargs):
                value = orig_num_boxes(targets, *args, **kwargs)
                self._cur["local_boxes"] = sum(int(t["labels"].shape[0]) for t in targets)
                self._cur["num_boxes"] = float(value)  # a float or a 0-dim tensor
                return value

            def criterion_forward(outputs, targets, *args, **kwargs):
                meta = outputs.get("dn_meta")
                self._cur["dn_num_group"] = int(meta["dn_num_group"]) if meta else None
                self._cur["dn_num_split"] = [int(x) for x in meta["dn_num_split"]] if meta else None
                self._cur["dn_queries_out"] = int(outputs["dn_outputs"][0]["pred_logits"].shape[1]) if meta else None
                losses = orig_forward(outputs, targets, *args, **kwargs)
                self._cur["loss_keys"] = sorted(losses)
                return losses

            crit._num_boxes = num_boxes
            crit.forward = criterion_forward
            mapper = data_loader.mapper
            orig_augs = mapper.augmentations_for_epoch

            def augmentations_for_epoch(epoch):
                augs = orig_augs(epoch)
                self._cur.setdefault("augmentations", []).append([epoch, [type(a).__name__ for a in augs]])
                return augs

            mapper.augmentations_for_epoch = augmentations_for_epoch  # num_workers=0: maps in this process
            self._prev = _flat_params(net).clone()

        def _grad_seen(self, name):
            def hook(grad):
                self._cur.setdefault("grad_params", set()).add(name)
                return grad

            return hook

        def _on_batch(self, module, args):
            batch = args[0]
            self._cur["batch_size"] = len(batch)
            self._cur["image_ids"] = [int(d["image_id"]) for d in batch]
            self._cur["image_hw"] = sorted({tuple(int(s) for s in d["image"].shape[-2:]) for d in batch})
            self._cur["epochs"] = sorted({int(d["_epoch"]) for d in batch})

        def run_step(self):
            self._cur = {}
            super().run_step()
            net = unwrap_model(self.model)
            flat = _flat_params(net)
            rec = self._cur
            rec["iter"] = int(self.iter)
            rec["skipped"] = bool(self.last_step_skipped)
            rec["param_max_diff_across_ranks"] = _max_diff_across_ranks(flat)
            rec["param_max_change"] = float((flat - self._prev).abs().max())
            self._prev = flat.clone()
            rec["grad_params_missing"] = sorted(set(self.trainable) - rec.pop("grad_params", set()))
            self.records.append(rec)

        def ema(self):
            for h in self._hooks:
                if isinstance(h, EMAHook):
                    return h.ema
            return None

    return InstrumentedTrainer


def _list_files(root: str) -> List[str]:
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


def phase_train(spec: Dict, rank: int) -> Dict:
    import torch
    from detectron2.utils import comm

    import neo_rtdetr.engine.train_net as train_net

    trainer_cls = _make_instrumented_trainer()
    train_net.RTDETRTrainer = trainer_cls  # do_train builds this (module-level name lookup)
    out_dir = os.path.join(spec["out"], f"train_rank{rank}")  # one folder per rank: shows who writes
    cfg = _tiny_cfg(spec, out_dir)
    train_net.do_train(cfg)
    trainer = trainer_cls.last
    ema = trainer.ema()
    comm.synchronize()
    res = {
        "steps": trainer.records,
        "wrapper": trainer.wrapper_type,
        "per_rank_batch_size": trainer.data_loader.per_rank_batch_size,
        "iters_per_epoch": trainer.data_loader.iters_per_epoch,
        "num_trainable": len(trainer.trainable),
        "ema_updates": ema.updates,
        "ema_param_max_diff_across_ranks": _max_diff_across_ranks(_flat_params(ema.module)),
        "ema_differs_from_model": float((_flat_params(ema.module) - trainer._prev).abs().max()),
        "storage_bbox_keys": sorted(k for k in trainer.storage.latest() if k.startswith("bbox/")),
        "files": _list_files(out_dir),
    }
    final = os.path.join(out_dir, "model_final.pth")
    if rank == 0 and os.path.isfile(final):
        ckpt = torch.load(final, map_location="cpu", weights_only=False)
        res["final_checkpoint_keys"] = sorted(ckpt)
        res["final_checkpoint_ema_updates"] = int(ckpt["ema"]["updates"])
    return res


def _eval_cfg(spec: Dict, output_dir: str):
    cfg = _tiny_cfg(spec, output_dir)
    cfg.dataloader.evaluator.output_dir = output_dir
    return cfg


def _evaluate(cfg, checkpoint: str) -> Dict:
    """Load ``checkpoint`` (its EMA weights) and run ``do_test``; records the images this process ran."""
    from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
    from neo_rtdetr.engine.train_net import build_model, do_test

    model = build_model(cfg)
    RTDETRCheckpointer(model).load_for_inference(checkpoint)
    model.eval()
    seen: List[int] = []
    model.register_forward_pre_hook(lambda m, args: seen.extend(int(d["image_id"]) for d in args[0]))
    results = do_test(cfg, model)
    return {"results": json.loads(json.dumps(results)), "local_image_ids": seen}


def phase_eval(spec: Dict, rank: int) -> Dict:
    out_dir = os.path.join(spec["out"], f"eval_dist_rank{rank}")
    checkpoint = os.path.join(spec["out"], "train_rank0", "model_final.pth")  # every rank reads rank 0's file
    res = _evaluate(_eval_cfg(spec, out_dir), checkpoint)
    res["files"] = _list_files(out_dir)
    return res


def phase_single_process_eval(spec: Dict) -> Dict:
    """After ``destroy_process_group``: world size 1, the whole val set in this process."""
    out_dir = os.path.join(spec["out"], "eval_single")
    checkpoint = os.path.join(spec["out"], "train_rank0", "model_final.pth")
    res = _evaluate(_eval_cfg(spec, out_dir), checkpoint)
    res["files"] = _list_files(out_dir)
    return res


def phase_sync_bn(spec: Dict, rank: int) -> Dict:
    """SyncBN under the real 2-rank group: conversion, eval forward, and the clear error before DDP on CPU."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    import neo_rtdetr.engine.train_net as train_net

    cfg = _tiny_cfg(spec, os.path.join(spec["out"], f"syncbn_rank{rank}"))
    cfg.train.sync_bn = True
    model = train_net.build_model(cfg)
    kinds: Dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, _BatchNorm) or "BatchNorm" in type(m).__name__:
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    res = {"norm_layers": kinds}
    # eval mode: SyncBatchNorm normalises with its running statistics, no communication (runs on CPU)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model([{"image": (torch.rand(3, 64, 64) * 255).to(torch.uint8), "image_id": 0}])
    res["eval_forward_boxes"] = int(out[0]["instances"].pred_boxes.tensor.shape[0])
    # training mode: torch refuses SyncBN on CPU; do_train says so before building anything
    try:
        train_net.do_train(cfg)
        res["do_train_error"] = None
    except ValueError as e:
        res["do_train_error"] = str(e)
    return res


def phase_indivisible_batch(spec: Dict) -> Dict:
    from detectron2.config import instantiate

    from neo_rtdetr.data.catalog import register_datasets_from_config

    cfg = _tiny_cfg(spec, os.path.join(spec["out"], "unused"))
    cfg.dataloader.train.total_batch_size = 3
    register_datasets_from_config(cfg.dataloader.datasets)
    try:
        instantiate(cfg.dataloader.train)
        return {"error": None}
    except ValueError as e:
        return {"error": str(e)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--dist-url", required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)

    import logging

    import torch.distributed as dist
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    setup_logger(name="neo_rtdetr", distributed_rank=args.rank)
    setup_logger(name="detectron2", distributed_rank=args.rank)
    logging.getLogger("neo_rtdetr").info("rank %d starting", args.rank)

    _init_distributed(args.rank, args.world_size, args.dist_url, spec["collective_timeout_s"])
    report = {"rank": comm.get_rank(), "world_size": comm.get_world_size(), "local_rank": comm.get_local_rank()}
    report["train"] = phase_train(spec, args.rank)
    report["eval"] = phase_eval(spec, args.rank)
    report["sync_bn"] = phase_sync_bn(spec, args.rank)
    report["indivisible_batch"] = phase_indivisible_batch(spec)
    reports = comm.all_gather(report)
    comm.synchronize()
    dist.destroy_process_group()
    if args.rank == 0:
        single = phase_single_process_eval(spec)
        tmp = spec["report"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"ranks": reports, "single_process_eval": single}, f)
        os.replace(tmp, spec["report"])
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:  # the traceback goes to the log the test shows on failure
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # exit now: do not wait in torch.distributed's teardown while the peer may be stuck
    sys.exit(code)
