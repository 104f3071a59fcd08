"""Train-loader faults: a worker process that dies (killed by a signal, as by the out-of-memory
killer) is reported with the image it was mapping; the loader's iterator does not touch torch's
global random stream (resumed runs draw the same numbers as uninterrupted ones)."""

import gc
import os
import signal

import pytest
import torch

from neo_rtdetr.data.build import build_rtdetr_train_loader


class _DiesOnImage:
    """A mapper whose worker process is SIGKILLed when it reaches one image."""

    def __init__(self, image_id):
        self.image_id = image_id

    def __call__(self, d):
        if d["image_id"] == self.image_id:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"image_id": d["image_id"]}


def _dicts(n=12):
    return [{"file_name": f"/data/img_{i:03d}.jpg", "image_id": 1000 + i} for i in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_is_reported_with_the_image_it_was_mapping(monkeypatch, workers):
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    loader = build_rtdetr_train_loader(dataset=_dicts(), mapper=_DiesOnImage(1007), total_batch_size=2,
                                       num_workers=workers)
    with pytest.raises(RuntimeError) as excinfo:
        for _ in zip(range(12), loader):  # one epoch: image 1007 comes up
            pass
    message = str(excinfo.value)
    assert "DataLoader worker" in message  # torch's own words come first
    assert "died while mapping dataset item 7 (file_name='/data/img_007.jpg', image_id=1007)" in message
    del excinfo
    gc.collect()


def test_creating_the_iterator_does_not_consume_the_global_torch_rng():
    loader = build_rtdetr_train_loader(dataset=_dicts(), mapper=lambda d: d, total_batch_size=2, num_workers=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    it = iter(loader)
    next(it)
    assert torch.equal(torch.rand(3), expected)
