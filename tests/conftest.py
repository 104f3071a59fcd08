"""Shared fixtures: a small synthetic COCO-format dataset generated once per test session."""

import os

import pytest


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A cache folder holding one small synthetic dataset (the spec of ``small_spec``)."""
    from neo_rtdetr.data.synthetic import ensure_synthetic_dataset

    cache = str(tmp_path_factory.mktemp("neo_rtdetr_cache"))
    ensure_synthetic_dataset(cache, small_spec())
    return cache


def small_spec():
    from neo_rtdetr.data.synthetic import SyntheticSpec

    return SyntheticSpec(num_train=24, num_val=8, min_size=96, max_size=160, min_object=6)


@pytest.fixture(scope="session")
def synthetic_root(synthetic_cache):
    from neo_rtdetr.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(synthetic_cache, small_spec())
