#!/usr/bin/env python3
"""Soak test: train a tiny RT-DETR for many iterations and check that host memory and open file
descriptors stay flat.

    python tools/soak_test.py --iters 1000 --output soak.json
    python tools/soak_test.py --iters 150 --warmup 50 --max-rss-growth-mib 64   # the CI variant

Runs the real training (``neo_rtdetr.engine.train_net.do_train``: data-loader workers, multi-scale,
EMA, periodic checkpoints, evaluation) of ``--config-file`` (default: the tiny CPU demo config) on
the synthetic data, with a :class:`~neo_rtdetr.engine.resource_probe.ResourceProbe` that samples
the RSS and open fds of the trainer and its data-loader workers. The reference sample is taken
after ``--warmup`` iterations; the table compares it with the end. Exits 1 when the total RSS grew
by more than ``--max-rss-growth-mib`` or the trainer's open files/pipes/sockets by more than
``--max-fd-growth`` (shared-memory fds of tensors in transit from the workers are reported apart:
their number follows the batches in flight).
``KEY=VALUE`` arguments after the options override the config (strict, like the train tool).
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile

# like the other tools: runnable from a checkout without installing the package
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/rtdetr_tiny_synthetic_demo.py")
    p.add_argument("--iters", type=int, default=1000, help="training iterations")
    p.add_argument("--warmup", type=int, default=100, help="iterations before the reference sample")
    p.add_argument("--period", type=int, default=50, help="iterations between samples")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    p.add_argument("--output", default=None, help="JSON file for the summary and all samples")
    p.add_argument("--work-dir", default=None, help="output_dir of the run (default: a temporary folder, removed)")
    p.add_argument("--cache-dir", default=None, help="synthetic dataset cache (default: $NEO_RTDETR_CACHE or ~/.cache/neo_rtdetr)")
    p.add_argument("--max-rss-growth-mib", type=float, default=100.0)
    p.add_argument("--max-fd-growth", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY=VALUE")
    return p.parse_args(argv)


def soak_overrides(args, output_dir):
    """The settings of a soak run: small synthetic set (many epochs: new permutations, epoch
    boundaries), 64x64 multi-scale, a checkpoint every 10 epochs and an evaluation every 20."""
    cache = [f"dataloader.datasets.0.cache_dir={args.cache_dir}"] if args.cache_dir else []
    return cache + [
        f"train.output_dir={output_dir}",
        "+dataloader.datasets.0.num_train=64",
        "+dataloader.datasets.0.num_val=16",
        f"train.max_iter={args.iters}",
        f"dataloader.train.num_workers={args.workers}",
        "dataloader.test.num_workers=1",
        "dataloader.image_size=[64,64]",
        "dataloader.train.multi_scale=[64,96]",
        "train.checkpoint_period_epochs=10",
        "train.eval_period_epochs=20",
        "train.checkpointer.max_to_keep=1",
        "train.log_period=50",
    ]


def format_table(summary) -> str:
    rows = [
        ("iterations", f"{summary['iterations']} ({summary['warmup_iterations']} warm-up)"),
        ("s / iteration (after warm-up)", f"{summary['seconds_per_iteration']:.3f}"),
        ("RSS total, MiB (trainer + workers)",
         f"{summary['rss_total_start_mib']:.0f} -> {summary['rss_total_end_mib']:.0f} "
         f"(growth {summary['rss_total_growth_mib']:+.1f}, peak {summary['rss_total_peak_mib']:.0f})"),
        ("RSS trainer, MiB", f"{summary['rss_main_start_mib']:.0f} -> {summary['rss_main_end_mib']:.0f} "
                             f"(growth {summary['rss_main_growth_mib']:+.1f})"),
        ("RSS workers, MiB", f"{summary['rss_workers_start_mib']:.0f} -> {summary['rss_workers_end_mib']:.0f}"),
        ("open fds trainer (files, pipes, sockets)", f"{summary['fds_main_start']} -> {summary['fds_main_end']}"),
        ("shared-memory fds trainer (tensors in transit)",
         f"{summary['shm_fds_main_start']} -> {summary['shm_fds_main_end']} (peak {summary['shm_fds_main_peak']})"),
        ("open fds workers", f"{summary['fds_workers_start']} -> {summary['fds_workers_end']}"),
        ("workers", f"{summary['workers_start']} -> {summary['workers_end']}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.iters <= args.warmup + 1:
        raise SystemExit(f"--iters ({args.iters}) must be larger than --warmup ({args.warmup}) + 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    from detectron2.config import LazyConfig

    from neo_rtdetr.config import apply_overrides_strict
    from neo_rtdetr.engine.resource_probe import ResourceProbe
    from neo_rtdetr.engine.train_net import do_train

    work = tempfile.TemporaryDirectory(prefix="neo_rtdetr_soak_") if args.work_dir is None else None
    output_dir = args.work_dir or work.name
    try:
        cfg = LazyConfig.load(args.config_file)
        cfg = apply_overrides_strict(cfg, soak_overrides(args, output_dir) + list(args.opts))
        torch.manual_seed(cfg.train.seed)
        probe = ResourceProbe(warmup=args.warmup, period=args.period)
        do_train(cfg, extra_hooks=[probe])
        summary = probe.summary()
    finally:
        if work is not None:
            work.cleanup()

    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    summary["torch_threads"] = torch.get_num_threads()
    summary["workers_configured"] = args.workers
    failures = []
    if summary["rss_total_growth_mib"] > args.max_rss_growth_mib:
        failures.append(f"total RSS grew by {summary['rss_total_growth_mib']:.1f} MiB (> {args.max_rss_growth_mib})")
    fd_growth = summary["fds_main_end"] - summary["fds_main_start"]
    if fd_growth > args.max_fd_growth:
        failures.append(f"the trainer's open fds grew by {fd_growth} (> {args.max_fd_growth})")
    summary["passed"] = not failures
    summary["failures"] = failures

    print(format_table(summary))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"summary": summary, "samples": probe.samples}, f, indent=1)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
