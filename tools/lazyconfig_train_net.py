#!/usr/bin/env python3
"""Train or evaluate RT-DETR with a LazyConfig, on Detectron2's engine.

    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --resume
    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --eval-only \
        train.init_checkpoint=model.pth

Overrides (``key=value`` after the options) must name existing config keys; ``+key=value`` adds one.
"""

import logging
import os
import sys

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.config import apply_overrides_strict
from neo_rtdetr.engine.host_threads import apply_cpu_threads
from neo_rtdetr.engine.train_net import build_model, do_test, do_train

logger = logging.getLogger("neo_rtdetr")


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides_strict(cfg, args.opts)
    default_setup(cfg, args)
    # default_setup configures detectron2's and fvcore's loggers; the project's go to the same places
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="neo_rtdetr", abbrev_name="neo_rtdetr")
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            raise SystemExit("--eval-only needs train.init_checkpoint=PATH")
        apply_cpu_threads(cfg)
        model = build_model(cfg)
        RTDETRCheckpointer(model).load_for_inference(cfg.train.init_checkpoint)
        model.eval()
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)


def check_world_size(args) -> None:
    """Fail before spawning any process when the config cannot be split over the world size.

    The training batch is ``dataloader.train.total_batch_size`` over all processes
    (``--num-gpus`` x ``--num-machines``); each process takes ``total / world size`` images.

    Raises:
        SystemExit: the total batch size is not a positive multiple of the world size.
    """
    world_size = args.num_gpus * args.num_machines
    if args.eval_only or world_size <= 1:
        return
    cfg = apply_overrides_strict(LazyConfig.load(args.config_file), args.opts)
    total = cfg.dataloader.train.total_batch_size
    if total <= 0 or total % world_size != 0:
        raise SystemExit(
            f"dataloader.train.total_batch_size={total} cannot be split over {world_size} processes "
            f"(--num-gpus {args.num_gpus} x --num-machines {args.num_machines}): it must be a positive multiple "
            f"of {world_size}. Change the batch (e.g. dataloader.train.total_batch_size={world_size * max(1, total // world_size)}) "
            "or the number of GPUs."
        )


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    if args.num_gpus > 1 or args.num_machines > 1:
        check_world_size(args)
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    else:
        main(args)


if __name__ == "__main__":
    sys.exit(cli())
