"""Training settings shared by every config (the contract of tools/lazyconfig_train_net.py)."""

train = dict(
    output_dir="./output",
    init_checkpoint="",  # a local .pth (e.g. from tools/convert_checkpoint.py); no URLs
    epochs=72,
    max_iter=None,  # None: epochs x iterations per epoch; an int overrides (quick runs)
    eval_period_epochs=1,  # COCOEvaluator every N epochs and at the end (0: only at the end)
    checkpoint_period_epochs=1,  # a checkpoint every N epochs and at the end (0: only at the end)
    log_period=20,
    device="cuda",
    seed=0,
    cudnn_benchmark=False,
    # intra-op CPU threads of each training process (neo_rtdetr/engine/host_threads.py). None: 1 on CUDA unless
    # OMP_NUM_THREADS is set (the data loader's workers have the cores: with PyTorch's default of one per core, small
    # host operators waited milliseconds for threads, run Q of docs/performance.md); PyTorch's default on the CPU
    cpu_threads=None,
    amp=dict(enabled=True, precision="bf16"),  # "bf16" | "fp16" (GradScaler) | "fp32"; off on CPU
    clip_grad=dict(max_norm=0.1),  # global grad-norm clipping (None: off)
    max_consecutive_nonfinite=10,  # non-finite steps are skipped; stop after this many in a row
    loss_trace=False,  # True: exact per-iteration losses/lr in <output_dir>/loss_trace.jsonl (metrics.json is smoothed)
    ema=dict(enabled=True, decay=0.9999, warmups=2000),  # evaluation and model_best use EMA weights
    sync_bn=True,  # BatchNorm -> SyncBatchNorm when several processes train (official runtime.yml; CUDA only)
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # torch.compile of the training model (neo_rtdetr/engine/compile.py: backbone, encoder, decoder with its
    # denoising queries padded to a fixed count, criterion loss terms); the EMA copy used for evaluation stays eager
    # (without the EMA, evaluation runs the compiled model, which compiles its eval graphs too; untimed). Under DDP
    # on several GPUs: not run yet (docs/multi_gpu.md). Meant for CUDA: mode="reduce-overhead" also replays the
    # static-shape parts as CUDA graphs (R50 640, batch 16, bf16 on an H200: the bare train step 2.0-2.7x eager; a
    # training run with the data loader and EMA 2.3x eager in run S, 217.2 img/s in run V; docs/performance.md runs
    # K, L, S, V) and is refused on CPU (there: mode=None). Cost: the first step at every new input size compiles,
    # minutes per size for R50 on a GPU, and multi-scale training has 11 distinct sizes. Turn it on from the command
    # line: train.compile.enabled=True (mode: None | "default" | "reduce-overhead" | "max-autotune-no-cudagraphs" |
    # "max-autotune", None written null on the command line; backend: a torch.compile backend).
    compile=dict(enabled=False, mode="reduce-overhead", backend="inductor"),
    # torch.profiler over a few iterations of this run (neo_rtdetr/engine/profiler_hook.py): a per-step summary
    # (wall vs device kernel time, host time per phase, host waits) and a Chrome trace under <output_dir>/profile/
    profile=dict(enabled=False, start_iter=100, iters=3, trace=True),
    checkpointer=dict(max_to_keep=5),
)
