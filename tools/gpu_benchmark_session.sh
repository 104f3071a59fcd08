#!/usr/bin/env bash
# One call on a GPU machine that has its own torch (e.g. the lent H100/H200): GPU tests, the benchmark tables of
# docs/performance.md, the data pipeline and an end-to-end run. Writes everything under OUT (default ./gpu_out).
#
#   bash install/build_offline_wheels.sh .whl 3.12     # here, once (see README: offline GPU machine)
#   OUT=/path bash tools/gpu_benchmark_session.sh [BASE_TREE]
#   OUT=/path PARTS="tests compiled" bash tools/gpu_benchmark_session.sh   # only some parts
#
# Parts (PARTS, default all; each part stays under 10 minutes, a lent machine's limit per command):
#   tests     the GPU tests (~6 min: the compiled-training and compiled-inference tests compile first)
#   bench     the benchmark tables (train variants, inference, HF transformers; BASE_TREE first if given)
#   data      the data pipeline per worker count
#   e2e       an R18 end-to-end run on synthetic data, then the fast paths' accuracy on its checkpoint
#   compiled  the compiled training step (compile_graphs) and eager at 640, each bare and stepped by the trainer
#             with its hooks (trainer_*: the trainer's own cost), each profiled (~8 min)
#   msda      the Triton deformable-attention op per launch configuration vs grid_sample, R50 decoder shapes (~1 min)
#   train     R50 640 training runs with the real data loader (synthetic COCO-sized JPEGs, fixed size 640):
#             train.compile then eager, each with train.profile over 3 iterations; step and data time (~8 min);
#             TRAIN_RUNS picks runs, among them same-call comparisons (compiled_unpacked, eager_unpacked,
#             eager_threads16: without the packed batches, with 16 intra-op threads); the runs share the call's
#             SESSION_LIMIT (570 s). Fit in one call: "compiled compiled_unpacked" with TRAIN_IMAGES=256 and
#             TRAIN_EXTRA="train.max_iter=300 train.profile.start_iter=250" (~8 min; the second compile is warm), or
#             the three eager runs (~5 min)
# TESTS_K: a pytest -k expression for the tests part (e.g. "packed or triton")
#
# BASE_TREE: optional checkout of an earlier commit (e.g. `git archive <commit> | tar -x -C .bench_base`): its
# tools/benchmark.py runs first on the same card, and this tree's rows get a ratio column against it.
# Each step has a time limit, so one slow step cannot eat the whole session. cuDNN autotuning stays off (it
# re-tunes for every multi-scale shape).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
BASE="${1:-}"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 NEO_RTDETR_CACHE="${NEO_RTDETR_CACHE:-/tmp/neo_rtdetr_cache}"
if [ -d .whl ] && ! python3 -c "import detectron2, fvcore, omegaconf, pycocotools" 2>/dev/null; then  # offline wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
start=$(date +%s); step() { echo "[$(( $(date +%s) - start )) s] $*"; }
PARTS="${PARTS:-tests bench data e2e compiled train msda}"; want() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }

if want tests; then
  timeout 540 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} > "$OUT/gpu_tests.log" 2>&1
  tail -3 "$OUT/gpu_tests.log"; step gpu tests
fi
baseline=()
if want bench && [ -n "$BASE" ]; then
  (cd "$BASE" && PYTHONPATH="$PWD:/tmp/site" timeout 150 python3 tools/benchmark.py --iters 10 --warmup 3 \
     --precisions bf16 --output "$OUT/bench_base.json" > "$OUT/bench_base.log" 2>&1)
  baseline=(--baseline-json "$OUT/bench_base.json"); step baseline
fi
if want bench; then
  timeout 300 python3 tools/benchmark.py --iters 15 --warmup 4 --train-variants default,channels_last,pytorch_msda \
    --hf-baseline ${baseline[@]+"${baseline[@]}"} --output "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  grep -E "img/s" "$OUT/bench.log"; step benchmark
fi
if want data; then
  timeout 150 python3 tools/benchmark_data.py --config-file configs/rtdetr_r50_synthetic640_h100.py \
    --workers 4,8,12,16 --batches 60 --warmup 3 --output "$OUT/data.json" dataloader.datasets.0.num_train=256 \
    > "$OUT/data.log" 2>&1
  echo "sharing strategy file_system (tensors passed as shared-memory files):" >> "$OUT/data.log"
  timeout 60 python3 tools/benchmark_data.py --config-file configs/rtdetr_r50_synthetic640_h100.py \
    --workers 12 --batches 60 --warmup 3 --sharing-strategy file_system --output "$OUT/data_file_system.json" \
    dataloader.datasets.0.num_train=256 >> "$OUT/data.log" 2>&1
  echo "pack_batches=False (PyTorch's per-tensor sharing):" >> "$OUT/data.log"
  timeout 60 python3 tools/benchmark_data.py --config-file configs/rtdetr_r50_synthetic640_h100.py \
    --workers 12 --batches 60 --warmup 3 --output "$OUT/data_unpacked.json" \
    dataloader.datasets.0.num_train=256 dataloader.train.pack_batches=False >> "$OUT/data.log" 2>&1
  grep -E "^workers|^sharing|^pack" "$OUT/data.log"; step data
fi
if want e2e; then
  rm -rf /tmp/r18  # (metrics.json is appended to)
  timeout 240 python3 tools/lazyconfig_train_net.py --config-file configs/rtdetr_r18_synthetic_h100.py \
    train.output_dir=/tmp/r18 train.log_period=50 > "$OUT/r18.log" 2>&1
  cp /tmp/r18/metrics.json "$OUT/r18_metrics.json" 2>/dev/null; step r18 end to end
  timeout 240 python3 tools/benchmark.py --skip-train --skip-infer --accuracy-config configs/rtdetr_r18_synthetic_h100.py \
    --accuracy-checkpoint /tmp/r18/model_final.pth --accuracy-compiled --output "$OUT/accuracy.json" > "$OUT/accuracy.log" 2>&1
  grep -A6 "^accuracy" "$OUT/accuracy.log"; step accuracy
fi
if want compiled; then
  rm -f "$OUT/bench_compiled_profile.txt"  # (appended to)
  timeout 540 python3 tools/benchmark.py --skip-infer --sizes 640x640 --train-precisions bf16 --iters 30 --warmup 5 \
    --train-variants compile_graphs,trainer_compile_graphs,default,trainer --profile-train "$OUT/bench_compiled_profile.txt" \
    --output "$OUT/bench_compiled.json" > "$OUT/bench_compiled.log" 2>&1
  grep -E "img/s|compilation" "$OUT/bench_compiled.log"; step compiled train step
fi
if want msda; then
  timeout 240 python3 tools/benchmark_msda.py --output "$OUT/msda.json" > "$OUT/msda.log" 2>&1
  cat "$OUT/msda.log"; step msda
fi
if want train; then
  # fixed 640 (one compiled size), only the final checkpoint, evaluation only at the end; TRAIN_CONFIG and
  # TRAIN_EXTRA (more overrides, after the runs' own: e.g. train.max_iter) choose another model or settings,
  # TRAIN_BATCH the batch (16), TRAIN_IMAGES the synthetic images generated (512, ~1 min), TRAIN_RUNS which runs
  batch="${TRAIN_BATCH:-16}"
  read -ra extra <<< "${TRAIN_EXTRA:-}"  # (split on spaces, no filename expansion)
  fixed=(+dataloader.datasets.0.num_train="${TRAIN_IMAGES:-512}" dataloader.train.total_batch_size="$batch"
         dataloader.train.multi_scale=null train.eval_period_epochs=0
         train.checkpoint_period_epochs=0 train.log_period=20 train.profile.enabled=True ${extra[@]+"${extra[@]}"})
  for name in ${TRAIN_RUNS:-}; do
    case " compiled compiled_unpacked eager eager_unpacked eager_threads16 " in *" $name "*) ;;
      *) echo "train: unknown run '$name' in TRAIN_RUNS (compiled compiled_unpacked eager eager_unpacked eager_threads16)";; esac
  done
  # name, time limit (s), iterations, the run's own overrides; the *_unpacked and *_threads16 runs are the same-call
  # comparisons for the packed batches and the intra-op threads (a second compiled run finds inductor's cache warm)
  for run in "compiled 400 400 train.compile.enabled=True train.profile.start_iter=300" \
             "compiled_unpacked 400 400 train.compile.enabled=True train.profile.start_iter=300 dataloader.train.pack_batches=False" \
             "eager 150 200 train.compile.enabled=False train.profile.start_iter=150" \
             "eager_unpacked 150 200 train.compile.enabled=False train.profile.start_iter=150 dataloader.train.pack_batches=False" \
             "eager_threads16 150 200 train.compile.enabled=False train.profile.start_iter=150 train.cpu_threads=16"; do
    set -- $run
    case " ${TRAIN_RUNS:-compiled eager} " in *" $1 "*) ;; *) echo "train: skipping $1 (TRAIN_RUNS=$TRAIN_RUNS)"; continue;; esac
    # the runs share the call's time (SESSION_LIMIT, default 570 s of a lent machine's 600 s per command): a run gets
    # at most what is left, less 40 s for its interrupt, kill and copies, and is skipped under 60 s
    limit=$(( ${SESSION_LIMIT:-570} - ($(date +%s) - start) - 40 )); [ "$limit" -gt "$2" ] && limit=$2
    if [ "$limit" -lt 60 ]; then echo "train: no time left for $1 (${limit} s)"; continue; fi
    rm -rf "/tmp/train_$1"
    timeout -k 30 -s INT "$limit" python3 tools/lazyconfig_train_net.py \
      --config-file "${TRAIN_CONFIG:-configs/rtdetr_r50_synthetic640_h100.py}" train.max_iter="$3" "${@:4}" \
      train.output_dir="/tmp/train_$1" "${fixed[@]}" > "$OUT/train_$1.log" 2>&1
    cp "/tmp/train_$1/metrics.json" "$OUT/train_$1_metrics.json" 2>/dev/null
    for f in /tmp/train_$1/profile/*; do [ -f "$f" ] && cp "$f" "$OUT/train_$1_$(basename "$f")"; done
    python3 - "$OUT/train_$1_metrics.json" "$1" "$batch" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
rows = []
for line in lines:  # (the last line may be cut short: the runs end on a time limit)
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if "time" in row and "data_time" in row:
        rows.append(row)
late = rows[len(rows) // 2:]  # the second half: compiled and warmed up
if late:
    t, d = (sum(r[k] for r in late) / len(late) for k in ("time", "data_time"))
    print(f"train ({sys.argv[2]}): {t * 1e3:.1f} ms per step = {int(sys.argv[3]) / t:.1f} img/s, data time {d * 1e3:.2f} ms "
          f"(iterations {late[0]['iteration']}-{late[-1]['iteration']})")
else:
    print(f"train ({sys.argv[2]}): no timed iterations")
PY
    step "train $1"
  done
fi
