"""Checks of the software environment: is the installed detectron2 usable by neo_rtdetr?

Kept free of detectron2 imports at module level so that it can diagnose a broken installation.
"""

import importlib
from typing import List, Tuple

__all__ = ["DETECTRON2_MODULES", "check_detectron2", "detectron2_has_compiled_ops"]

# Every detectron2 module neo_rtdetr (library, configs, tools) imports. Keep in sync: the
# environment test imports each one.
DETECTRON2_MODULES = (
    "detectron2",
    "detectron2.config",
    "detectron2.checkpoint",
    "detectron2.data",
    "detectron2.data.datasets",
    "detectron2.data.detection_utils",
    "detectron2.data.samplers",
    "detectron2.data.transforms",
    "detectron2.engine",
    "detectron2.engine.hooks",
    "detectron2.evaluation",
    "detectron2.layers",
    "detectron2.modeling",
    "detectron2.solver",
    "detectron2.structures",
    "detectron2.utils.comm",
    "detectron2.utils.events",
    "detectron2.utils.logger",
    "detectron2.utils.visualizer",
    "detectron2.utils.video_visualizer",
)


def check_detectron2() -> Tuple[bool, List[str]]:
    """Import every module of :data:`DETECTRON2_MODULES`.

    Returns:
        (ok, problems): ``ok`` is True when all imports succeed; ``problems`` holds one line per
        failing module with the exception, for an actionable error message.
    """
    problems = []
    for name in DETECTRON2_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - we report every kind of import failure
            problems.append(f"{name}: {type(e).__name__}: {e}")
    return not problems, problems


def detectron2_has_compiled_ops() -> bool:
    """Whether detectron2's C++ extension is really built (False for the pure-Python install)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_NEO_RTDETR_STUB", False)


if __name__ == "__main__":
    import sys

    ok, problems = check_detectron2()
    if not ok:
        print("detectron2 is not usable by neo_rtdetr:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    import detectron2

    print(f"detectron2 {detectron2.__version__} at {detectron2.__file__} is usable "
          f"(compiled ops: {'yes' if detectron2_has_compiled_ops() else 'no'})")
