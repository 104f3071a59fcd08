"""The installed detectron2 must be usable by neo_rtdetr, without runtime monkeypatching."""

import importlib

import pytest

from neo_rtdetr.utils.env import DETECTRON2_MODULES, check_detectron2, detectron2_has_compiled_ops


def test_every_detectron2_module_the_project_uses_imports():
    ok, problems = check_detectron2()
    assert ok, (
        "the installed detectron2 is not usable by neo_rtdetr; run `bash install/setup.sh` "
        "(it installs detectron2 v0.6 patched to pure Python when none works):\n  " + "\n  ".join(problems)
    )


def test_project_code_imports_only_checked_detectron2_modules():
    """Every `detectron2.*` module imported by neo_rtdetr, tools and configs is in the checked list."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    used = set()
    for folder in ("neo_rtdetr", "tools", "configs", "projects"):
        for path in (root / folder).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:from|import)\s+(detectron2(?:\.\w+)*)", path.read_text(), re.M):
                used.add(m.group(1))
    missing = {u for u in used if u not in DETECTRON2_MODULES and not any(u.startswith(p + ".") for p in DETECTRON2_MODULES)}
    assert not missing, f"add these to neo_rtdetr.utils.env.DETECTRON2_MODULES: {sorted(missing)}"


def test_no_numpy_or_pil_monkeypatching():
    """The Pillow/numpy fixes live in the detectron2 patch, not in aliases set at run time."""
    import numpy as np
    import PIL
    import PIL.Image

    for name in DETECTRON2_MODULES:
        importlib.import_module(name)
    importlib.import_module("neo_rtdetr")
    for alias in ("int", "float", "str", "object"):
        assert alias not in np.__dict__, f"np.{alias} was added at run time"
    if int(PIL.__version__.split(".")[0]) >= 10:
        assert not hasattr(PIL.Image, "LINEAR"), "PIL.Image.LINEAR was added at run time"


def test_missing_compiled_op_raises_a_clear_error():
    from detectron2 import _C

    if detectron2_has_compiled_ops():
        pytest.skip("this detectron2 has its real compiled extension")
    with pytest.raises(ImportError, match="deform_conv_forward"):
        _C.deform_conv_forward  # noqa: B018 - attribute access is the operation under test
    # collect_env (used by detectron2's default_setup) still works
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_transform_default_interpolation_is_bilinear():
    """The Pillow >= 10 fix: ExtentTransform's default interp is BILINEAR (was Image.LINEAR)."""
    import inspect

    from PIL import Image

    from detectron2.data.transforms import ExtentTransform

    assert inspect.signature(ExtentTransform.__init__).parameters["interp"].default == Image.BILINEAR
