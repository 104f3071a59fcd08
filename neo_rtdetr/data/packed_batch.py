"""A training batch sent from a data-loader worker as one shared-memory buffer instead of one per tensor.

PyTorch passes every tensor of a worker's result as its own shared-memory block: with the default sharing strategy
the receiving process fetches one file descriptor per tensor over a socket from the worker, in Python, holding the
GIL. A batch of 16 samples (image, boxes, classes... per sample) is ~64 tensors, and the training process spends
12-16 ms of CPU per batch receiving them (measured on a 2-core machine, ``tools/benchmark_data.py``), on its
pin-memory thread, competing for the GIL with the thread that runs the training step.

:meth:`PackedBatch.pack` (in the worker) copies every tensor of the batch into one shared-memory byte buffer, at
aligned offsets, and pickles the rest of the batch (dicts, ``Instances``, ``Boxes``, strings...) with each tensor
replaced by its place in the buffer. The worker copies each tensor once, as PyTorch would have done to share it.
:meth:`PackedBatch.unpack` (in the training process) unpickles the batch with every tensor a view into the buffer:
one descriptor per batch, and one pinning copy when the loader pins memory. The workers pay for it (~20 ms per batch,
the copy in their loop instead of their queue's feeder thread); the training process gains more: a compiled R50 640
run on an H200 took 73.7 ms per step packed, 78.4 ms not (docs/performance.md, run V).

Differences from PyTorch's per-tensor sharing: a tensor comes back contiguous (strides are not kept), and every
tensor of a batch is a view of the one buffer, so a tensor kept past the step (by a hook, a visualiser) keeps the whole
batch's buffer alive: ``.clone()`` what you keep. The same tensor object appearing twice in a batch comes back as one
object; distinct views of one storage come back as distinct tensors. ``dataloader.train.pack_batches=False`` turns
packing off.
"""

import io
import pickle
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["PackedBatch"]

_ALIGN = 64  # bytes: every tensor starts at a multiple (any dtype can be viewed there)


class _TensorCollector(pickle.Pickler):
    """Pickles an object with each tensor replaced by a reference ``(index,)`` to :attr:`tensors`."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: List[Tensor] = []
        self._index_of: Dict[int, int] = {}  # id(tensor) -> index (pickle asks persistent_id before its memo)

    def persistent_id(self, obj):
        if not isinstance(obj, Tensor):
            return None
        index = self._index_of.get(id(obj))
        if index is None:
            if (type(obj) is not Tensor or obj.requires_grad or obj.device.type != "cpu"
                    or obj.layout is not torch.strided or obj.is_quantized or obj.is_nested):
                raise TypeError(
                    f"PackedBatch: only plain dense CPU tensors without autograd can be packed, got "
                    f"{type(obj).__name__} on {obj.device} (layout={obj.layout}, quantized={obj.is_quantized}, "
                    f"requires_grad={obj.requires_grad}); a mapper that returns such tensors needs "
                    "dataloader.train.pack_batches=False"
                )
            index = self._index_of[id(obj)] = len(self.tensors)
            self.tensors.append(obj)
        return (index,)


class _TensorViews(pickle.Unpickler):
    """Unpickles what :class:`_TensorCollector` wrote, each reference becoming a view into ``buffer``."""

    def __init__(self, file, buffer: Tensor, layout: List[Tuple[int, int, torch.dtype, Tuple[int, ...]]]):
        super().__init__(file)
        self.buffer = buffer
        self.layout = layout
        self._views: Dict[int, Tensor] = {}

    def persistent_load(self, pid):
        (index,) = pid
        view = self._views.get(index)
        if view is None:
            offset, nbytes, dtype, shape = self.layout[index]
            view = self._views[index] = self.buffer[offset : offset + nbytes].view(dtype).view(shape)
        return view


class PackedBatch:
    """A picklable batch: one uint8 buffer holding every tensor, and the pickle of everything else.

    Attributes:
        buffer: [total bytes] uint8, in shared memory when packed in a data-loader worker.
        layout: per tensor ``(byte offset, byte size, dtype, shape)``, in pickling order.
        payload: the batch pickled with each tensor replaced by its index in ``layout``.
    """

    def __init__(self, buffer: Tensor, layout: List[Tuple[int, int, torch.dtype, Tuple[int, ...]]], payload: bytes):
        self.buffer = buffer
        self.layout = layout
        self.payload = payload

    @classmethod
    def pack(cls, batch: Any, *, shared: bool = True) -> "PackedBatch":
        """Pack ``batch`` (any picklable structure holding CPU tensors).

        Args:
            batch: e.g. the ``list[dict]`` of mapped samples; tensors may be non-contiguous (they are copied and come
                back contiguous).
            shared: allocate the buffer in shared memory (what a worker sends to the training process without
                another copy).

        Raises:
            TypeError: a tensor is on an accelerator, requires grad, is a subclass, sparse, quantized or nested
                (those cannot be rebuilt as views of a byte buffer).
        """
        file = io.BytesIO()
        collector = _TensorCollector(file)
        collector.dump(batch)
        layout, total = [], 0
        for t in collector.tensors:
            nbytes = t.numel() * t.element_size()
            layout.append((total, nbytes, t.dtype, tuple(t.shape)))
            total += -(-nbytes // _ALIGN) * _ALIGN
        if shared:  # (what torch's default_collate does in a worker: a storage allocated in shared memory)
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
        else:
            buffer = torch.empty(total, dtype=torch.uint8)
        for (offset, nbytes, dtype, shape), t in zip(layout, collector.tensors):
            buffer[offset : offset + nbytes].view(dtype).view(shape).copy_(t)
        return cls(buffer, layout, file.getvalue())

    def unpack(self) -> Any:
        """The batch, every tensor a view into :attr:`buffer` (pinned if the buffer is)."""
        return _TensorViews(io.BytesIO(self.payload), self.buffer, self.layout).load()

    def pin_memory(self, device=None) -> "PackedBatch":
        """Called by the DataLoader's pin-memory thread: one page-locked copy of the whole buffer."""
        return PackedBatch(self.buffer.pin_memory(), self.layout, self.payload)
