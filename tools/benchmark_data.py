#!/usr/bin/env python3
"""Throughput of a config's training data pipeline (decode, augment, resize, collate), without a model.

    python tools/benchmark_data.py --config-file configs/rtdetr_r50_synthetic640_h100.py --workers 0,4,8,12 \
        --target-img-per-s 200 --output data.json

For each worker count: the config's real train loader (dataset, mapper with its augmentations, multi-scale
collate, pinned memory) is iterated for ``--batches`` batches after ``--warmup``; images per second are
reported, and with ``--target-img-per-s`` (e.g. the GPU's train-step rate from tools/benchmark.py) whether the GPU
would wait on data. ``0`` workers maps in the main process: its rate is one worker's.

Warm-up: ``--warmup`` batches plus the workers' first wave (``2 × workers`` batches, PyTorch's prefetch factor).
The workers start together and the batches they prefetched arrive in a burst; a window that begins inside that burst
overstates the steady rate (on the lent H200 machine, 20 batches after 3 of warm-up at 12 workers once read 719 img/s;
96-batch windows in another call read 228-239).

``main_cpu_ms_per_batch``: the CPU time of the training process itself (all its threads: receiving each batch from
the workers, rebuilding its tensors from shared memory, pinning) per batch. A training step shares the process, so
this time is taken from the step's host side (with workers; with 0 workers it is the whole mapping).
"""

import argparse
import json
import os
import sys
import time

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_PREFETCH_FACTOR = 2  # torch.utils.data.DataLoader's default, which the train loader keeps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--workers", default="0,4,8,12")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--target-img-per-s", type=float, default=None)
    p.add_argument("--sharing-strategy", default=None, choices=["file_descriptor", "file_system"],
                   help="torch.multiprocessing's way of passing tensors from the workers (default: torch's own)")
    p.add_argument("--output", default="benchmark_data.json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch.multiprocessing

    from detectron2.config import LazyConfig, instantiate

    from neo_rtdetr.config.overrides import apply_overrides_strict
    from neo_rtdetr.data.catalog import register_datasets_from_config

    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides_strict(cfg, args.opts)
    register_datasets_from_config(cfg.dataloader.get("datasets"))
    if args.sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        cfg.dataloader.train.num_workers = workers
        loader = instantiate(cfg.dataloader.train)
        it = iter(loader)
        warmup = args.warmup + _PREFETCH_FACTOR * workers  # the first wave of prefetched batches, then steady state
        for _ in range(warmup):
            next(it)
        start, cpu_start = time.perf_counter(), time.process_time()
        images = 0
        for _ in range(args.batches):
            images += len(next(it))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rate = images / elapsed
        row = {"workers": workers, "img_per_s": rate, "per_worker_img_per_s": rate / max(workers, 1),
               "ms_per_batch": 1e3 * elapsed / args.batches, "main_cpu_ms_per_batch": 1e3 * cpu / args.batches,
               "warmup_batches": warmup}
        if args.target_img_per_s:
            row["keeps_up"] = rate >= args.target_img_per_s
        rows.append(row)
        verdict = "" if not args.target_img_per_s else (
            "  keeps up" if row["keeps_up"] else f"  GPU waits (needs {args.target_img_per_s:.0f} img/s)")
        print(f"workers {workers:>3}: {rate:8.1f} img/s ({row['per_worker_img_per_s']:.1f} per worker), "
              f"{row['ms_per_batch']:.1f} ms per batch, training process CPU {row['main_cpu_ms_per_batch']:.1f} ms "
              f"per batch{verdict}", flush=True)
        del it, loader
    result = {"config": args.config_file, "cpus": os.cpu_count(), "rows": rows,
              "sharing_strategy": torch.multiprocessing.get_sharing_strategy(),
              "batch_size": int(cfg.dataloader.train.total_batch_size)}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
