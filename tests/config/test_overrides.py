import pytest

from detectron2.config import LazyConfig

from neo_rtdetr.config import apply_overrides_strict


def _cfg():
    return LazyConfig.load("configs/common/models/rtdetr_tiny.py")


def test_existing_keys_are_overridden():
    cfg = apply_overrides_strict(_cfg(), ["model.decoder.num_layers=5", "model.pixel_std=[1.0,2.0,3.0]"])
    assert cfg.model.decoder.num_layers == 5
    assert list(cfg.model.pixel_std) == [1.0, 2.0, 3.0]


def test_a_typo_is_an_error_with_suggestions():
    with pytest.raises(KeyError, match="did you mean: model.decoder.num_layers"):
        apply_overrides_strict(_cfg(), ["model.decoder.num_layer=5"])
    with pytest.raises(KeyError, match="unknown config key 'train.max_itr'"):
        apply_overrides_strict(_cfg(), ["train.max_itr=5"])


def test_plus_adds_a_key_on_purpose():
    cfg = apply_overrides_strict(_cfg(), ["+model.extra_note=3"])
    assert cfg.model.extra_note == 3


def test_list_items_are_addressable():
    cfg = LazyConfig.load("configs/common/models/rtdetr_r50.py")
    cfg = apply_overrides_strict(cfg, ["model.encoder.in_channels.0=256"])
    assert cfg.model.encoder.in_channels[0] == 256
    with pytest.raises(KeyError):
        apply_overrides_strict(cfg, ["model.encoder.in_channels.7=1"])
