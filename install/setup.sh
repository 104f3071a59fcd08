#!/usr/bin/env bash
# One-command, idempotent set-up of neo_rtdetr in the current Python environment ($PYTHON,
# default python3): torch + torchvision, detectron2 (an existing working one is left alone,
# otherwise v0.6 patched to pure Python, see install/detectron2_v0.6.patch), then neo_rtdetr
# itself in editable mode with its test dependencies. A second run reuses what is installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PY="${PYTHON:-python3}"
CACHE="${NEO_RTDETR_CACHE:-$HOME/.cache/neo_rtdetr}"
TORCH_SPEC="${NEO_RTDETR_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. torch + torchvision: keep a working pair, else install the pinned one.
if "$PY" -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" 2>/dev/null; then
  echo "[setup] torch $("$PY" -c 'import torch; print(torch.__version__)') + torchvision already work"
else
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $TORCH_SPEC
fi

# 2. neo_rtdetr (editable) and its own dependencies (opencv among them, which detectron2 needs
#    but does not declare). Skip pip when nothing changed.
stamp="$CACHE/setup-$(cat "$repo/setup.py" | sha256sum | cut -c1-16)-$("$PY" -c 'import sys; print(sys.prefix)' | sha256sum | cut -c1-8)"
# (checked from / so that the current directory's neo_rtdetr does not hide where the install points)
if [ -f "$stamp" ] && (cd / && "$PY" -c "import neo_rtdetr, pytest, transformers, cv2") 2>/dev/null \
   && [ "$(cd / && "$PY" -c 'import neo_rtdetr, os; print(os.path.dirname(os.path.dirname(neo_rtdetr.__file__)))')" = "$repo" ]; then
  echo "[setup] neo_rtdetr already installed from $repo"
else
  echo "[setup] installing neo_rtdetr (editable) with its test dependencies"
  (cd "$repo" && "$PY" -m pip install -q -e ".[test]")
  mkdir -p "$CACHE" && touch "$stamp"
fi
# 3. detectron2
"$here/install_detectron2.sh" ensure "$CACHE/wheels"
echo "[setup] done"
