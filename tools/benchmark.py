#!/usr/bin/env python3
"""Speed of RT-DETR on whatever GPU (or CPU) is present: train step and inference, synthetic inputs.

    python tools/benchmark.py --config-file configs/common/models/rtdetr_r50.py --output bench.json
    python tools/benchmark.py ... --hf-baseline        # also Hugging Face transformers' RT-DETR inference

Prints a table (img/s, ms per batch, peak memory) and writes JSON with the device name, torch version
and the git commit. No data loading: inputs are random images with random boxes, so the numbers are
the model's (the data pipeline is measured separately). Ratios are only meaningful within one run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/common/models/rtdetr_r50.py")
    p.add_argument("--sizes", default="640x640,1088x1920", help="HxW list")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--infer-batches", default="1,8,32")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--hf-baseline", action="store_true", help="also time HF transformers RTDetrForObjectDetection (r50vd)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--output", default="benchmark.json")
    return p.parse_args(argv)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, warmup, iters):
    import torch

    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    elapsed = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return elapsed, peak


def _inputs(batch, h, w, num_classes, device, with_targets):
    import torch

    from detectron2.structures import Instances

    from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        d = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device)}
        if with_targets:
            n = int(torch.randint(1, 20, (1,), generator=g))
            inst = Instances((h, w))
            cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
            wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
            inst.set(TARGET_BOXES_FIELD, torch.cat([cxcy, wh], 1).to(device))
            inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g).to(device)
            d["instances"] = inst
        out.append(d)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from detectron2.config import LazyConfig, instantiate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = LazyConfig.load(args.config_file)
    model_cfg = cfg.model
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    rows = []

    def record(**row):
        rows.append(row)
        print(
            f"{row['what']:<28} {row['precision']:<5} {row['size']:<10} bs {row['batch']:<3} "
            f"{row['img_per_s']:9.1f} img/s {row['ms_per_batch']:9.2f} ms  peak {row['peak_gib']:.2f} GiB",
            flush=True,
        )

    model = instantiate(model_cfg).to(device)
    K = model.num_classes
    for prec in args.precisions.split(","):
        amp = prec != "fp32" and device.type == "cuda"
        for h, w in sizes:
            if not args.skip_train:
                model.train()
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
                batch = _inputs(args.train_batch, h, w, K, device, True)

                def train_step():
                    with torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                        losses = model(batch)
                    loss = sum(losses.values())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                    opt.step()

                try:
                    t, peak = _time(train_step, device, args.warmup, args.iters)
                    record(what="ours train step", precision=prec, size=f"{h}x{w}", batch=args.train_batch,
                           img_per_s=args.train_batch / t, ms_per_batch=t * 1e3, peak_gib=peak)
                except torch.cuda.OutOfMemoryError:
                    print(f"ours train step {prec} {h}x{w}: out of memory", flush=True)
                del opt
                torch.cuda.empty_cache() if device.type == "cuda" else None
            model.eval()
            for bs in [int(b) for b in args.infer_batches.split(",")]:
                batch = _inputs(bs, h, w, K, device, False)

                def infer():
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                        model(batch)

                t, peak = _time(infer, device, args.warmup, args.iters)
                record(what="ours inference", precision=prec, size=f"{h}x{w}", batch=bs,
                       img_per_s=bs / t, ms_per_batch=t * 1e3, peak_gib=peak)

    if args.hf_baseline:
        import transformers

        hf = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(num_labels=80)).to(device).eval()
        for prec in args.precisions.split(","):
            amp = prec != "fp32" and device.type == "cuda"
            for h, w in sizes:
                if h != w:
                    continue  # HF's pre-v5 position embedding and its processor assume square inputs
                for bs in [int(b) for b in args.infer_batches.split(",")]:
                    x = torch.rand(bs, 3, h, w, device=device)

                    def hf_infer():
                        with torch.no_grad(), torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                            hf(pixel_values=x)

                    t, peak = _time(hf_infer, device, args.warmup, args.iters)
                    record(what=f"HF transformers {transformers.__version__}", precision=prec, size=f"{h}x{w}",
                           batch=bs, img_per_s=bs / t, ms_per_batch=t * 1e3, peak_gib=peak)

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "commit": commit or os.environ.get("NEO_RTDETR_COMMIT", ""),
        "config": args.config_file,
        "rows": rows,
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output} ({result['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
