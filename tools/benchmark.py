#!/usr/bin/env python3
"""Speed (and accuracy of the fast paths) of RT-DETR on whatever GPU is present; synthetic inputs, no data loading.

    python tools/benchmark.py --output bench.json                      # R50: train step + inference, our paths
    python tools/benchmark.py ... --hf-baseline                        # + Hugging Face transformers' RT-DETR
    python tools/benchmark.py ... --accuracy-config C --accuracy-checkpoint W   # + fast paths vs fp32 on real data

Rows:

* ``train step``: forward with denoising, all loss terms, backward, grad clipping (0.1), AdamW step; batch
  ``--train-batch`` with 1-19 random boxes per image. Variants (``--train-variants``): ``default`` (the model as
  configured: Triton deformable attention on CUDA, batched matcher/criterion; fused AdamW), ``channels_last``,
  ``pytorch_msda`` (the grid_sample reference core instead of the Triton kernels), ``foreach_adamw``,
  ``compile`` (channels-last, backbone and encoder under ``torch.compile``), ``compile_all`` (+ the decoder,
  denoising queries padded to a fixed count, and the criterion's loss terms), ``compile_graphs`` (``compile_all``
  with ``mode="reduce-overhead"``: the static-shape parts replayed as CUDA graphs). ``trainer`` and
  ``trainer_compile_graphs``: ``default`` and ``compile_graphs`` stepped as a training run steps them, by
  :class:`~neo_rtdetr.engine.trainer.RTDETRTrainer` with the per-step seeding and EMA hooks, on host (pinned) batches
  as the data loader gives them, four of them in turn with other box counts; no data loader (no worker processes).
  The difference to the bare step (one batch whose images are already on the GPU) is the trainer's own cost plus
  the images' host-to-GPU copy and the changing box counts.
* ``eager`` inference: ``model(list[dict])`` (Detectron2 contract, uint8 images in, Instances out), bf16 autocast
  or fp32. ``fast``: :class:`~neo_rtdetr.engine.fast_inference.FastInference` (deployed bf16/fp32 copy,
  channels-last, CUDA graphs), same contract. ``fast net``: its network + top-k on a normalised float batch (what
  an exported model runs; comparable with HF, which also takes a float ``pixel_values`` batch and returns raw
  outputs). ``compiled net``: the same with ``FastInference(compile=True)`` (``torch.compile`` inside the graphs).
* ``HF transformers``: ``RTDetrForObjectDetection`` (r50vd, random weights) on a float batch.

``--accuracy-*``: evaluates a trained checkpoint on its config's test set with the fp32 eager model (the
reference), bf16 autocast, and FastInference bf16/fp32: COCO AP of each and the fraction of the reference's top-100
detections per image that each path reproduces (same class, IoU >= 0.9, score within 0.02).

Prints a table (img/s, ms per batch, peak memory) and writes JSON with the device name, torch version and git
commit. ``--baseline-json`` adds a ratio column against another run's JSON (e.g. the code before an optimisation,
run in the same session on the same card). Ratios are only meaningful within one session on one card.
"""

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time

TRAIN_VARIANTS = (
    "default", "channels_last", "pytorch_msda", "foreach_adamw", "compile", "compile_all", "compile_graphs",
    "trainer", "trainer_compile_graphs",
)
# row names of earlier versions of this script, for --baseline-json
BASELINE_ALIASES = {"train step (default)": "ours train step", "ours eager": "ours inference"}
# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/common/models/rtdetr_r50.py")
    p.add_argument("--sizes", default="640x640,1088x1920", help="HxW list")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-sizes", default=None, help="HxW list for the train step (default: --sizes)")
    p.add_argument("--train-variants", default="default", help=f"comma list of {TRAIN_VARIANTS}")
    p.add_argument("--train-precisions", default="bf16")
    p.add_argument("--infer-batches", default="1,8,32")
    p.add_argument("--precisions", default="bf16,fp32", help="inference precisions")
    p.add_argument("--modes", default="eager,fast,fast_net", help="inference paths (also: compiled_net)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune its convolution algorithms")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--hf-baseline", action="store_true", help="also time HF transformers RTDetrForObjectDetection")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--accuracy-config", default=None, help="config of a trained model (its test set is used)")
    p.add_argument("--accuracy-checkpoint", default=None)
    p.add_argument("--accuracy-max-images", type=int, default=0, help="0 = the whole test set")
    p.add_argument("--accuracy-compiled", action="store_true",
                   help="also FastInference(compile=True) (compiles once per test-image shape: slow to start)")
    p.add_argument("--profile-train", default=None, help="write a profiler table of the train step here (every --train-variants entry and size)")
    p.add_argument("--profile-infer", default=None, help="write a kernel table of the deployed network (eager) here (first --precisions entry, largest batch)")
    p.add_argument("--baseline-json", default=None, help="add a ratio column against this earlier result")
    p.add_argument("--output", default="benchmark.json")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- timing
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, warmup, iters):
    """Median-free simple mean over ``iters`` calls after ``warmup``; returns (seconds per call, peak allocated GiB,
    peak reserved GiB)."""
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
    # also the reserved peak: the memory pool of CUDA graphs (compile_graphs) is taken while they are recorded (in
    # the warm-up) and reused by every replay, so the allocated peak of the timed steps leaves it out. The pool
    # outlives the row: with several sizes or precisions it also holds the earlier ones' graphs (exact for one size)
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else float("nan")
    return elapsed, peak, reserved


def _inputs(batch, h, w, num_classes, device, with_targets, seed=0):
    """A batch as the model takes it; images on ``device`` (pinned when they stay on the host of a CUDA machine, as
    the data loader gives them), targets on the host."""
    import torch

    from detectron2.structures import Instances

    from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

    g = torch.Generator().manual_seed(seed)
    pin = device.type == "cpu" and torch.cuda.is_available()
    out = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device)
        d = {"image": image.pin_memory() if pin else image}
        if with_targets:
            n = int(torch.randint(1, 20, (1,), generator=g))
            inst = Instances((h, w))
            cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
            wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
            inst.set(TARGET_BOXES_FIELD, torch.cat([cxcy, wh], 1))  # host tensors, as the data loader gives
            inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
            d["instances"] = inst
        out.append(d)
    return out


def _parse_sizes(text):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


# ----------------------------------------------------------------------------------------------- model
def _build(cfg_model, device, *, channels_last=False):
    import torch

    from detectron2.config import instantiate

    torch.manual_seed(0)
    cfg = copy.deepcopy(cfg_model)
    cfg.channels_last = channels_last
    return instantiate(cfg).to(device)


def _use_reference_msda(model):
    from neo_rtdetr.modeling.decoder.ms_deform_attn import multi_scale_deformable_attention

    for m in model.modules():
        if hasattr(m, "ms_deformable_attn_core"):
            m.ms_deformable_attn_core = multi_scale_deformable_attention


class _TrainerStep:
    """One training iteration as a training run does it: RTDETRTrainer's step between the hooks' ``before_step`` /
    ``after_step`` (per-step seeding, EMA), over host batches in turn; inside an EventStorage (the trainer's metrics).
    """

    def __init__(self, model, optimizer, ema, batches, precision, amp):
        import itertools

        from detectron2.utils.events import EventStorage

        from neo_rtdetr.engine.ema import EMAHook
        from neo_rtdetr.engine.step_seed import StepSeedHook
        from neo_rtdetr.engine.trainer import RTDETRTrainer

        self.trainer = RTDETRTrainer(model, itertools.cycle(batches), optimizer, precision=precision, amp=amp,
                                     clip_grad_max_norm=0.1)
        self.trainer.register_hooks([StepSeedHook(0), EMAHook(ema)])
        self.trainer.iter = self.trainer.start_iter = 0
        self.trainer.max_iter = 1 << 40
        self.storage = EventStorage(0)
        self.trainer.storage = self.storage.__enter__()
        self.trainer.before_train()

    def __call__(self):
        t = self.trainer
        t.before_step()
        t.run_step()
        t.after_step()
        t.iter += 1

    def close(self):
        self.storage.__exit__(None, None, None)


def bench_train(args, cfg_model, device, record):
    import torch

    from neo_rtdetr.utils.profiling import phase

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    variants = args.train_variants.split(",")
    for variant in variants:
        if variant not in TRAIN_VARIANTS:
            raise SystemExit(f"unknown train variant {variant!r}; choose from {TRAIN_VARIANTS}")
    for variant in variants:
        via_trainer = variant.startswith("trainer")
        base = variant.partition("_")[2] if variant.startswith("trainer_") else "default" if via_trainer else variant
        model = _build(cfg_model, device, channels_last=base == "channels_last" or base.startswith("compile"))
        model.train()
        ema = None
        if via_trainer:  # made before compiling, as train_net does (the EMA copy stays eager)
            from neo_rtdetr.engine.ema import ModelEMA

            ema = ModelEMA(model, decay=0.9999, warmups=2000)
        if base == "pytorch_msda":
            _use_reference_msda(model)
        if base.startswith("compile"):
            from neo_rtdetr.engine.compile import compile_model

            everything = base != "compile"
            compile_model(model, decoder=everything, criterion=everything,
                          mode="reduce-overhead" if base == "compile_graphs" else None)
        params = [p for p in model.parameters() if p.requires_grad]
        fused = base != "foreach_adamw" and device.type == "cuda"
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused) if fused else torch.optim.AdamW(params, lr=1e-5)
        for prec in args.train_precisions.split(","):
            amp = prec != "fp32" and device.type == "cuda"
            for h, w in _parse_sizes(args.train_sizes or args.sizes):
                batch = None if via_trainer else _inputs(args.train_batch, h, w, model.num_classes, device, True)
                stepper = None
                if via_trainer:
                    host = torch.device("cpu")
                    batches = [_inputs(args.train_batch, h, w, model.num_classes, host, True, seed=s) for s in range(4)]
                    stepper = _TrainerStep(model, opt, ema, batches, prec, amp)

                def train_step():
                    if stepper is not None:
                        return stepper()
                    torch.compiler.cudagraph_mark_step_begin()  # (compile_graphs: a new step of the CUDA graph trees)
                    with torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                        losses = model(batch)
                    loss = torch.stack(list(losses.values())).sum()
                    opt.zero_grad(set_to_none=True)
                    with phase("backward"):
                        loss.backward()
                    with phase("clip + optimizer"):
                        torch.nn.utils.clip_grad_norm_(params, 0.1)
                        opt.step()

                try:
                    if "compile" in variant:  # compile outside the timed warm-up, and say how long it took
                        t0 = time.perf_counter()
                        train_step()
                        _sync(device)
                        print(f"train step ({variant}) {prec} {h}x{w}: first step (compilation) "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
                    t, peak, reserved = _time(train_step, device, args.warmup, args.iters)
                    record(what=f"train step ({variant})", precision=prec, size=f"{h}x{w}", batch=args.train_batch,
                           img_per_s=args.train_batch / t, ms_per_batch=t * 1e3, peak_gib=peak,
                           reserved_gib=reserved)
                    if args.profile_train:
                        _profile(train_step, device, args.profile_train, f"{variant} {prec} {h}x{w}", model)
                except torch.cuda.OutOfMemoryError:
                    print(f"train step ({variant}) {prec} {h}x{w}: out of memory", flush=True)
                except Exception as e:  # a compile failure is a result to report, not a reason to stop the run
                    if "compile" not in variant:
                        raise
                    print(f"train step ({variant}) {prec} {h}x{w}: FAILED {type(e).__name__}: {str(e)[:300]}",
                          flush=True)
                finally:
                    if stepper is not None:
                        stepper.close()
                        stepper = None  # (the trainer holds the model: let it go with the variant)
        del model, opt, ema, params, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _profile(step, device, path, title, model=None):
    """Profile 3 steps: per-phase host and device time, kernel launches per step, and the top operators."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from neo_rtdetr.utils.profiling import phase_markers, step_summary_lines

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    _sync(device)
    handles = phase_markers(model) if model is not None else []
    try:
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            _sync(device)
    finally:
        for h in handles:
            h.remove()
    averages = prof.key_averages()
    lines = [f"==== {title}: per step (mean of 3)"] + step_summary_lines(averages, 3, cuda=device.type == "cuda")
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
        f.write(f"==== {title}: 3 steps, sorted by {sort}\n")
        f.write(averages.table(sort_by=sort, row_limit=40) + "\n")
        f.write(f"==== {title}: sorted by self_cpu_time_total\n")
        f.write(averages.table(sort_by="self_cpu_time_total", row_limit=40) + "\n")
    print("\n".join(lines), flush=True)


def _profile_infer(fast, batch, device, path, title):
    """Kernel time of the deployed network run eagerly (the kernels its CUDA graph replays), 3 calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = fast.net.preprocess_image(batch).tensor
    with torch.no_grad():
        fast._network(x)
        _sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                fast._network(x)
            _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "a") as f:
        f.write(f"==== {title}: 3 calls, sorted by {sort}\n")
        f.write(prof.key_averages().table(sort_by=sort, row_limit=60) + "\n")


def bench_infer(args, cfg_model, device, record):
    import torch

    from neo_rtdetr.engine.fast_inference import FastInference

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    model = _build(cfg_model, device).eval()
    modes = args.modes.split(",")
    precisions = args.precisions.split(",")
    for prec in precisions:
        fast = FastInference(model, dtype=dtypes[prec]) if ("fast" in modes or "fast_net" in modes) else None
        compiled = FastInference(model, dtype=dtypes[prec], compile=True) if "compiled_net" in modes else None
        amp = prec != "fp32" and device.type == "cuda"
        for h, w in _parse_sizes(args.sizes):
            for bs in [int(b) for b in args.infer_batches.split(",")]:
                batch = _inputs(bs, h, w, model.num_classes, device, False)
                paths = {}
                if "eager" in modes:
                    def eager():
                        with torch.no_grad(), torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                            model(batch)

                    paths["eager"] = eager
                if "fast" in modes:
                    paths["fast"] = lambda: fast(batch)
                if "fast_net" in modes:
                    x = fast.net.preprocess_image(batch).tensor
                    paths["fast net"] = lambda: fast.run_network(x)
                if args.profile_infer and prec == precisions[0] and bs == max(int(b) for b in args.infer_batches.split(",")):
                    _profile_infer(fast or FastInference(model, dtype=dtypes[prec]), batch, device, args.profile_infer,
                                   f"deployed network (eager, no graph) {prec} {h}x{w} bs {bs}")
                if "compiled_net" in modes:
                    xc = compiled.net.preprocess_image(batch).tensor
                    t0 = time.perf_counter()
                    try:
                        compiled.run_network(xc)
                        print(f"compiled net {prec} {h}x{w} bs {bs}: compile + capture "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
                        paths["compiled net"] = lambda: compiled.run_network(xc)
                    except Exception as e:  # a compile failure is a result to report; the other rows still run
                        print(f"compiled net {prec} {h}x{w} bs {bs}: FAILED {type(e).__name__}: {str(e)[:300]}",
                              flush=True)
                for name, fn in paths.items():
                    try:
                        t, peak, reserved = _time(fn, device, args.warmup, args.iters)
                    except torch.cuda.OutOfMemoryError:
                        print(f"{name} {prec} {h}x{w} bs {bs}: out of memory", flush=True)
                        continue
                    record(what=f"ours {name}", precision=prec, size=f"{h}x{w}", batch=bs,
                           img_per_s=bs / t, ms_per_batch=t * 1e3, peak_gib=peak, reserved_gib=reserved)
        del fast, compiled
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_hf(args, device, record):
    import torch
    import transformers

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    hf = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(num_labels=80)).to(device).eval()
    for prec in args.precisions.split(","):
        amp = prec != "fp32" and device.type == "cuda"
        for h, w in _parse_sizes(args.sizes):
            for bs in [int(b) for b in args.infer_batches.split(",")]:
                x = torch.rand(bs, 3, h, w, device=device)

                def hf_infer():
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtypes[prec], enabled=amp):
                        hf(pixel_values=x)

                try:
                    t, peak, reserved = _time(hf_infer, device, args.warmup, args.iters)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # e.g. a size HF's anchors reject
                    print(f"HF {prec} {h}x{w} bs {bs}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                    continue
                record(what=f"HF transformers {transformers.__version__}", precision=prec, size=f"{h}x{w}",
                       batch=bs, img_per_s=bs / t, ms_per_batch=t * 1e3, peak_gib=peak, reserved_gib=reserved)


# ----------------------------------------------------------------------------------------------- accuracy
def bench_accuracy(args, device):
    """AP and detection agreement of the fast paths against the fp32 eager model on a trained checkpoint."""
    import torch

    from detectron2.config import LazyConfig, instantiate

    from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
    from neo_rtdetr.data.catalog import register_datasets_from_config
    from neo_rtdetr.engine.fast_inference import FastInference
    from neo_rtdetr.utils.detection_agreement import detection_agreement

    cfg = LazyConfig.load(args.accuracy_config)
    register_datasets_from_config(cfg.dataloader.get("datasets"))
    model = instantiate(cfg.model).to(device).eval()
    RTDETRCheckpointer(model).load(args.accuracy_checkpoint)
    loader = instantiate(cfg.dataloader.test)
    batches = []
    for i, b in enumerate(loader):
        if args.accuracy_max_images and i * len(b) >= args.accuracy_max_images:
            break
        batches.append(b)

    class _Autocast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return self.inner(batch)

    paths = {
        "eager fp32": model,
        "eager bf16 autocast": _Autocast(model),
        "fast bf16": FastInference(model, dtype=torch.bfloat16),
        "fast fp32": FastInference(model, dtype=torch.float32),
    }
    if args.accuracy_compiled:
        paths["fast bf16 compiled"] = FastInference(model, dtype=torch.bfloat16, compile=True)
    outputs, results = {}, {}
    for name, m in paths.items():
        evaluator = instantiate(cfg.dataloader.evaluator)
        evaluator.reset()
        outputs[name] = []
        with torch.no_grad():  # one pass per path: the same outputs feed the evaluator and the agreement
            for b in batches:
                out = m(b)
                evaluator.process(b, out)
                outputs[name] += [o["instances"].to("cpu") for o in out]
        ap = evaluator.evaluate()["bbox"]
        results[name] = {"AP": ap["AP"], "AP50": ap["AP50"]}
    ref = outputs["eager fp32"]
    for name in paths:
        agree = [detection_agreement(r, c, top_k=100, score_tolerance=0.02) for r, c in zip(ref, outputs[name])]
        results[name]["agreement_top100"] = sum(agree) / max(len(agree), 1)
    print(f"\naccuracy ({args.accuracy_config}, {len(ref)} images): AP / AP50 / agreement with eager fp32")
    for name, r in results.items():
        print(f"  {name:<22} {r['AP']:6.2f} {r['AP50']:6.2f} {r['agreement_top100']:8.4f}")
    return results


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from detectron2.config import LazyConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    cfg_model = LazyConfig.load(args.config_file).model
    baseline = {}
    if args.baseline_json:
        with open(args.baseline_json) as f:
            for row in json.load(f)["rows"]:
                baseline[(row["what"], row["precision"], row["size"], row["batch"])] = row["img_per_s"]
    rows = []

    def record(**row):
        rows.append(row)
        ratio = ""
        key = (row["what"], row["precision"], row["size"], row["batch"])
        for base_key in (key, (BASELINE_ALIASES.get(row["what"], row["what"]), *key[1:])):
            if base_key in baseline:
                row["baseline_img_per_s"] = baseline[base_key]
                ratio = f"  x{row['img_per_s'] / baseline[base_key]:.2f} vs baseline"
                break
        print(
            f"{row['what']:<32} {row['precision']:<5} {row['size']:<10} bs {row['batch']:<3} "
            f"{row['img_per_s']:9.1f} img/s {row['ms_per_batch']:9.2f} ms  peak {row['peak_gib']:.2f} GiB"
            f" (reserved {row['reserved_gib']:.2f}){ratio}",
            flush=True,
        )

    if not args.skip_train:
        bench_train(args, cfg_model, device, record)
    if not args.skip_infer:
        bench_infer(args, cfg_model, device, record)
    if args.hf_baseline:
        bench_hf(args, device, record)
    accuracy = bench_accuracy(args, device) if args.accuracy_config else None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "commit": commit or os.environ.get("NEO_RTDETR_COMMIT", ""),
        "config": args.config_file,
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "rows": rows,
        "accuracy": accuracy,
    }
    if accuracy is not None:  # (``config`` is the model of the speed rows)
        result["accuracy_config"], result["accuracy_checkpoint"] = args.accuracy_config, args.accuracy_checkpoint
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output} ({result['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
