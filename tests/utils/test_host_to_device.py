"""to_device: the same values, dtype and device as Tensor.to (the pinned staging itself needs CUDA: tests/gpu)."""

import torch

from neo_rtdetr.utils.host_to_device import to_device


def test_to_device_on_cpu_equals_tensor_to():
    t = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    same = to_device(t, torch.device("cpu"))
    assert same is t
    cast = to_device(t, "cpu", torch.int32)
    assert cast.dtype == torch.int32 and torch.equal(cast, t.to(torch.int32))
    f = to_device(t, "cpu", torch.float32)
    assert f.dtype == torch.float32 and torch.equal(f, t.float())
