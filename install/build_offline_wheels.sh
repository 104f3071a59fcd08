#!/usr/bin/env bash
# Build the wheels an offline GPU machine needs to run neo_rtdetr next to its own torch.
#
#   install/build_offline_wheels.sh OUT_DIR [PYTHON_VERSION]      (default 3.12)
#
# Run it here (registry access, torch installed: the detectron2 sdist's metadata step imports
# torch). OUT_DIR receives pure-Python wheels of detectron2 v0.6 (patched, see
# install/detectron2_v0.6.patch), fvcore, iopath, omegaconf, hydra-core, antlr4, yacs, termcolor
# and neo_rtdetr, plus pycocotools built for CPython PYTHON_VERSION on manylinux x86-64.
# The offline machine is assumed to have torch, torchvision, numpy, scipy, opencv, Pillow,
# PyYAML, tqdm, tabulate, portalocker, matplotlib, tensorboard and cloudpickle (a typical CUDA
# image does). Install there with (see README):
#   python3 -m pip install --no-index --no-deps OUT_DIR/*.whl
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PY="${PYTHON:-python3}"
out="${1:?usage: $0 OUT_DIR [PYTHON_VERSION]}"
pyver="${2:-3.12}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$here/install_detectron2.sh" build "$out"
# Pure-Python packages (two of them exist only as sdists: build their wheels here).
"$PY" -m pip wheel -q --no-deps -w "$out" \
  fvcore==0.1.5.post20221221 iopath==0.1.9 omegaconf==2.3.1 hydra-core==1.3.8 \
  antlr4-python3-runtime==4.9.3 yacs==0.1.8 termcolor==3.3.0
# Compiled: pycocotools for the target interpreter.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out" pycocotools==2.0.11
# The project itself.
(cd "$repo" && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .)
ls -1 "$out"
