"""PackedBatch: a batch packed into one byte buffer (in a worker) unpacks to the same structure and values, every
tensor a view into that buffer."""

import pickle

import pytest
import torch
from detectron2.structures import Boxes, Instances

from neo_rtdetr.data.packed_batch import PackedBatch


def _batch():
    instances = Instances((5, 7))
    instances.gt_boxes = Boxes(torch.rand(3, 4))
    instances.gt_classes = torch.tensor([1, 0, 2])
    return [
        {"image": torch.randint(0, 255, (3, 5, 7), dtype=torch.uint8), "instances": instances, "file_name": "a.jpg",
         "image_id": 7, "height": 5, "width": 7},
        {"image": torch.randint(0, 255, (3, 2, 9), dtype=torch.uint8), "instances": Instances((2, 9)),
         "odd": [torch.rand(4, 6).t(), torch.zeros(0, 4), torch.tensor([True, False, True]),
                 torch.tensor(2.5, dtype=torch.float64), torch.arange(5, dtype=torch.int16)]},
    ]


def _walk(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, Instances):
        for v in obj.get_fields().values():
            yield from _walk(v)
    elif isinstance(obj, Boxes):
        yield obj.tensor


@pytest.mark.parametrize("shared", [True, False])
def test_unpacks_to_the_same_batch_with_views_into_one_buffer(shared):
    batch = _batch()
    packed = PackedBatch.pack(batch, shared=shared)
    assert packed.buffer.is_shared() == shared
    # a private buffer goes through a pickle round trip (a shared one crosses processes in tests/data/test_build.py)
    out = packed.unpack() if shared else pickle.loads(pickle.dumps(packed)).unpack()
    assert [sorted(d) for d in out] == [sorted(d) for d in batch]
    assert out[0]["file_name"] == "a.jpg" and out[0]["image_id"] == 7
    assert out[0]["instances"].image_size == (5, 7) and out[1]["instances"].get_fields() == {}
    before, after = list(_walk(batch)), list(_walk(out))
    assert len(before) == len(after) == len(packed.layout) == 9
    base = packed.buffer.data_ptr() if shared else None
    for x, y in zip(before, after):
        assert y.dtype == x.dtype and y.shape == x.shape and torch.equal(x, y)
        assert y.is_contiguous()
        if shared and y.numel():  # a view into the buffer, at an aligned offset
            offset = y.data_ptr() - base
            assert 0 <= offset < max(packed.buffer.numel(), 1) and offset % 64 == 0


@pytest.mark.parametrize("tensor", [
    torch.zeros(2, requires_grad=True), torch.nn.Parameter(torch.zeros(2)), torch.zeros(3).to_sparse(),
    torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8),
], ids=["requires_grad", "parameter", "sparse", "quantized"])
def test_refuses_tensors_it_cannot_rebuild(tensor):
    with pytest.raises(TypeError, match="only plain dense CPU tensors without autograd.*pack_batches=False"):
        PackedBatch.pack([{"w": tensor}])


def test_a_tensor_twice_in_the_batch_is_packed_once_and_comes_back_as_one_object():
    boxes = torch.rand(3, 4)
    packed = PackedBatch.pack([{"a": boxes, "b": [boxes]}, {"c": torch.ones(2)}])
    assert len(packed.layout) == 2
    out = packed.unpack()
    assert out[0]["a"] is out[0]["b"][0] and torch.equal(out[0]["a"], boxes)


def test_the_loaders_pin_memory_pins_the_whole_buffer_once(monkeypatch):
    """torch's DataLoader pins a worker's result with ``_utils.pin_memory.pin_memory``: for a PackedBatch that must
    reach :meth:`PackedBatch.pin_memory` (one copy of the buffer), whose views then all lie in the pinned copy."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned_calls = []

    def fake_pin(self, *args, **kwargs):  # (no CUDA here: a copy stands for the page-locked one)
        pinned_calls.append(self.numel())
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    packed = PackedBatch.pack(_batch())
    result = pin_memory(packed)
    assert isinstance(result, PackedBatch) and pinned_calls == [packed.buffer.numel()]
    assert result.buffer.data_ptr() != packed.buffer.data_ptr()
    start, end = result.buffer.data_ptr(), result.buffer.data_ptr() + result.buffer.numel()
    assert all(start <= t.data_ptr() < end for t in _walk(result.unpack()) if t.numel())


def test_a_batch_without_tensors():
    packed = PackedBatch.pack([{"file_name": "x"}])
    assert packed.unpack() == [{"file_name": "x"}] and packed.buffer.numel() == 0
