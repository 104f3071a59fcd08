#!/usr/bin/env bash
# Build detectron2 v0.6 (PyPI sdist pb1-detectron2==0.6) as a pure-Python wheel with the patch in
# install/detectron2_v0.6.patch, and optionally install it.
#
#   install/install_detectron2.sh build  WHEEL_DIR   # build the wheel into WHEEL_DIR (needs the registry)
#   install/install_detectron2.sh ensure WHEEL_DIR   # leave a working detectron2 alone, else build+install
#
# Python is $PYTHON (default: python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PY="${PYTHON:-python3}"
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
PATCH_REVISION=$(sed -n 's/.*PATCH_REVISION=\([0-9]*\).*/\1/p' "$here/detectron2_v0.6.patch" | head -1)
VERSION="0.6+neortdetr${PATCH_REVISION}"
WHEEL_NAME="pb1_detectron2-${VERSION}-py3-none-any.whl"

build_wheel() {
  local out="$1"
  mkdir -p "$out"
  if [ -f "$out/$WHEEL_NAME" ]; then echo "[detectron2] wheel already built: $out/$WHEEL_NAME"; return; fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  echo "[detectron2] downloading the pb1-detectron2==0.6 sdist"
  # The sdist's setup.py imports torch, so its metadata step needs the torch installed here.
  "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: pb1-detectron2==0.6 -d "$work"
  echo "$SDIST_SHA256  $work/pb1-detectron2-0.6.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$work/pb1-detectron2-0.6.tar.gz" -C "$work"
  echo "[detectron2] applying install/detectron2_v0.6.patch (revision $PATCH_REVISION)"
  (cd "$work/pb1-detectron2-0.6" && patch -p1 --quiet < "$here/detectron2_v0.6.patch")
  echo "[detectron2] building the pure-Python wheel"
  (cd "$work/pb1-detectron2-0.6" && D2_VERSION_SUFFIX="+neortdetr${PATCH_REVISION}" \
    "$PY" -m pip wheel -q --no-deps --no-build-isolation . -w "$out")
  test -f "$out/$WHEEL_NAME"
  echo "[detectron2] built $out/$WHEEL_NAME"
}

detectron2_usable() {
  (cd "$repo" && "$PY" -m neo_rtdetr.utils.env)
}

case "${1:-}" in
  build)
    build_wheel "${2:?wheel dir}" ;;
  ensure)
    wheel_dir="${2:?wheel dir}"
    if detectron2_usable 2>/tmp/neo_rtdetr_d2_check.$$; then
      rm -f /tmp/neo_rtdetr_d2_check.$$
      installed=$("$PY" -c "import importlib.metadata as m; print(m.version('pb1-detectron2'))" 2>/dev/null || true)
      if [ -z "$installed" ] || [ "$installed" = "$VERSION" ]; then exit 0; fi
      echo "[detectron2] installed pb1-detectron2 $installed is not patch revision $PATCH_REVISION: reinstalling"
    elif "$PY" -c "import importlib.metadata as m; m.version('detectron2')" 2>/dev/null; then
      # A detectron2 of the user's own (e.g. a source build) that does not work: never overwrite it.
      echo "[detectron2] an installed detectron2 is not usable:" >&2
      cat /tmp/neo_rtdetr_d2_check.$$ >&2; rm -f /tmp/neo_rtdetr_d2_check.$$
      echo "[detectron2] fix or uninstall it ('pip uninstall detectron2'), then run the setup again." >&2
      exit 1
    fi
    rm -f /tmp/neo_rtdetr_d2_check.$$
    build_wheel "$wheel_dir"
    echo "[detectron2] installing $WHEEL_NAME and its dependencies"
    "$PY" -m pip install -q "$wheel_dir/$WHEEL_NAME"
    detectron2_usable ;;
  *)
    echo "usage: $0 {build|ensure} WHEEL_DIR" >&2; exit 2 ;;
esac
