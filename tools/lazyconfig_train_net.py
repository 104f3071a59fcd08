#!/usr/bin/env python3
"""Train or evaluate RT-DETR with a LazyConfig, on Detectron2's engine.

    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --resume
    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_h100.py --eval-only \
        train.init_checkpoint=model.pth

Overrides (``key=value`` after the options) must name existing config keys; ``+key=value`` adds one.
"""

import logging
import sys

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.config import apply_overrides_strict
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
        model = build_model(cfg)
        RTDETRCheckpointer(model).load_for_inference(cfg.train.init_checkpoint)
        model.eval()
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    if args.num_gpus > 1 or args.num_machines > 1:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    else:
        main(args)


if __name__ == "__main__":
    sys.exit(cli())
