"""Fixtures of the RT-DETRv2 project tests."""

import pytest


@pytest.fixture(scope="session")
def hf_v2_r18_model():
    """One random-weight HF ``RTDetrV2ForObjectDetection`` r18vd in float64 (built once: ~5 s on CPU)."""
    pytest.importorskip("transformers")
    from .rtdetrv2_helpers import hf_v2_r18

    return hf_v2_r18(seed=0)
