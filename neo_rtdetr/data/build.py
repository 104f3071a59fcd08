"""RT-DETR data loaders: an epoch-based, resumable training loader and a batched test loader.

Training (:func:`build_rtdetr_train_loader`) reproduces the official epoch-based sampling on top
of detectron2's iteration-based trainer:

* iteration ``i`` belongs to epoch ``e = i // iters_per_epoch``; every epoch is a fresh
  permutation (``torch.randperm`` with a generator seeded by (seed, e)); the last incomplete
  global batch of an epoch is dropped; rank ``r`` takes its slice of each global batch;
* every sample dict is tagged with ``_epoch`` (stop-epoch augmentation policy of
  :class:`RTDETRDatasetMapper`) and ``_sample_seed`` (derived from (seed, e, dataset index)), so
  a sample's augmentation is deterministic, whatever the worker count or the resume point;
* :meth:`RTDETRTrainLoader.set_start_iter` makes a resumed run continue with exactly the batches
  an uninterrupted run would have produced;
* multi-scale training (official ``multi_scale`` / ``BatchImageCollateFunction``): each per-rank
  batch is resized with nearest interpolation to a square size drawn from ``multi_scale`` by an
  RNG seeded with (seed, iteration), until ``multi_scale_stop_epoch``.

* errors name the sample: a mapping error is re-raised with the item's file name and image id;
  a worker process that dies (killed by a signal, out of memory) is reported with the file it was
  mapping at that moment (recorded in shared memory by each worker);
* creating the loader iterator does not consume torch's global RNG (the workers' base seed comes
  from a generator seeded with ``seed``), so a resumed run's random stream is the uninterrupted
  run's.

One DataLoader "item" is a whole per-rank batch (the sampler yields batch descriptors and
``batch_size=None``), so each batch is mapped exactly once, by one worker, and the multi-scale
resize runs in the worker too.
"""

import itertools
import logging
import multiprocessing
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .packed_batch import PackedBatch

__all__ = [
    "RTDETRTrainLoader",
    "build_rtdetr_train_loader",
    "build_rtdetr_test_loader",
    "sample_seed",
    "epoch_permutation",
    "multi_scale_size",
    "resize_batch",
]

logger = logging.getLogger(__name__)

# Domain-separation tags so that the different derived seeds never coincide.
_TAG_PERMUTATION = 1
_TAG_SAMPLE = 2
_TAG_MULTI_SCALE = 3
_TAG_STEP = 4  # neo_rtdetr.engine.step_seed: per-iteration seed of the global generators

#: One sample of a batch: (dataset index, epoch, iteration).
SampleDescriptor = Tuple[int, int, int]


def _derive_seed(*values: int, bits: int = 63) -> int:
    """A non-negative integer seed of ``bits`` bits derived from a tuple of non-negative ints."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << bits) - 1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The ``_sample_seed`` of dataset item ``index`` in ``epoch`` (a 63-bit int)."""
    return _derive_seed(seed, _TAG_SAMPLE, epoch, index)


def epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    """The sample order of ``epoch``: int64 tensor [size], a permutation of range(size)."""
    g = torch.Generator()
    g.manual_seed(_derive_seed(seed, _TAG_PERMUTATION, epoch))
    return torch.randperm(size, generator=g)


def multi_scale_size(seed: int, iteration: int, sizes: Sequence[int]) -> int:
    """The multi-scale side length used at ``iteration`` (identical on every rank)."""
    rng = np.random.default_rng([int(seed), _TAG_MULTI_SCALE, int(iteration)])
    return int(sizes[int(rng.integers(len(sizes)))])


def resize_batch(batch: List[Dict], size: int) -> List[Dict]:
    """Resize every image of a batch to ``size`` x ``size`` (nearest, as the official code does).

    ``gt_boxes`` and the Instances' ``image_size`` are rescaled; the normalised boxes (and every
    other field) are unchanged. When the images differ in size the batch is returned unchanged.

    Args:
        batch: mapped dicts whose ``image`` is a uint8 tensor [3, H, W] (the same H, W for all).
        size: the new side length.

    Returns:
        The batch (the dicts are updated in place), images of shape [3, size, size].
    """
    shapes = {tuple(d["image"].shape) for d in batch}
    if len(shapes) != 1:
        return batch
    _, h, w = next(iter(shapes))
    if (h, w) == (size, size):
        return batch
    images = torch.stack([d["image"] for d in batch])  # [B, 3, H, W]
    images = F.interpolate(images, size=(size, size), mode="nearest")
    sx, sy = size / w, size / h
    for d, img in zip(batch, images):
        d["image"] = img.contiguous()
        inst = d.get("instances")
        if inst is None:
            continue
        new = Instances((size, size))
        for name, value in inst.get_fields().items():
            if name == "gt_boxes":
                value = Boxes(value.tensor * value.tensor.new_tensor([sx, sy, sx, sy]))
            new.set(name, value)
        d["instances"] = new
    return batch


def _check_seed(seed) -> int:
    """None -> 0; a negative seed is refused (the sample order must be reproducible to resume)."""
    seed = 0 if seed is None else int(seed)
    if seed < 0:
        raise ValueError(f"the data seed must be >= 0 (got {seed}): the sample order must be reproducible for resuming")
    return seed


def _identity(x):
    return x


class _BatchDescriptorSampler(Sampler):
    """Infinite stream of per-rank batch descriptors (lists of (index, epoch, iteration))."""

    def __init__(self, loader: "RTDETRTrainLoader", start_iter: int):
        self._loader = loader
        self._start_iter = start_iter

    def __iter__(self) -> Iterator[List[SampleDescriptor]]:
        for iteration in itertools.count(self._start_iter):
            yield self._loader.batch_descriptor(iteration)


class _WorkerProgress:
    """What each DataLoader worker is mapping, in shared memory, to name it if the worker dies.

    A worker killed by a signal (out-of-memory killer, a segfault in an image decoder) cannot
    report anything; torch only says "DataLoader worker (pid N) is killed by signal". Each worker
    records (pid, dataset index, iteration) here before mapping a sample, so the main process can
    name the file that was being mapped.
    """

    _FIELDS = 3  # pid, dataset index (-1: between samples), iteration

    def __init__(self, num_workers: int):
        self._slots = multiprocessing.Array("q", [-1] * (self._FIELDS * max(1, num_workers)), lock=False)

    def start(self, index: int, iteration: int) -> None:
        """Called in a worker before it maps dataset item ``index`` (a no-op in the main process)."""
        info = get_worker_info()
        if info is None:
            return
        base = self._FIELDS * info.id
        self._slots[base] = os.getpid()
        self._slots[base + 2] = iteration
        self._slots[base + 1] = index

    def done(self) -> None:
        """Called in a worker after a sample was mapped."""
        info = get_worker_info()
        if info is not None:
            self._slots[self._FIELDS * info.id + 1] = -1

    def of_pid(self, pid: int) -> Optional[Tuple[int, int, int]]:
        """(worker id, dataset index or -1, iteration) last recorded by the worker process ``pid``."""
        for worker_id in range(len(self._slots) // self._FIELDS):
            base = self._FIELDS * worker_id
            if self._slots[base] == pid:
                return worker_id, int(self._slots[base + 1]), int(self._slots[base + 2])
        return None


_DEAD_WORKER = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([0-9][0-9, ]*)\)")


class _BatchMapDataset(Dataset):
    """Maps a whole per-rank batch descriptor to a list of mapped dicts (+ multi-scale)."""

    def __init__(self, dataset, mapper: Callable, seed: int, multi_scale: Optional[Sequence[int]],
                 multi_scale_stop_epoch: Optional[int], num_workers: int = 0):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed  # already checked by RTDETRTrainLoader
        self.multi_scale = list(multi_scale) if multi_scale else None
        self.multi_scale_stop_epoch = multi_scale_stop_epoch
        self.progress = _WorkerProgress(num_workers)

    def describe_item(self, index: int) -> str:
        """``"dataset item 5 (file_name='...', image_id=42)"``."""
        d = self.dataset[index]
        return f"dataset item {index} (file_name={d.get('file_name')!r}, image_id={d.get('image_id')!r})"

    def explain_dead_worker(self, error: BaseException) -> Optional[str]:
        """For torch's "DataLoader worker (pid N) ..." errors: what the dead worker was mapping."""
        match = _DEAD_WORKER.search(str(error))
        if match is None:
            return None
        lines = []
        for pid in (int(p) for p in match.group(1).replace(",", " ").split()):
            state = self.progress.of_pid(pid)
            if state is None:
                lines.append(f"worker pid {pid} had not started a sample")
                continue
            worker_id, index, iteration = state
            if index >= 0:
                lines.append(f"worker {worker_id} (pid {pid}) died while mapping {self.describe_item(index)} "
                             f"for iteration {iteration}")
            else:
                lines.append(f"worker {worker_id} (pid {pid}) died between samples of iteration {iteration} "
                             "(e.g. in the multi-scale resize, or packing the batch into shared memory)")
        return "; ".join(lines)

    def map_one(self, index: int, epoch: int, iteration: int) -> Dict:
        d = dict(self.dataset[index])
        d["_epoch"] = epoch
        d["_sample_seed"] = sample_seed(self.seed, epoch, index)
        self.progress.start(index, iteration)
        try:
            out = self.mapper(d)
        except Exception as e:  # noqa: BLE001 - re-raised with the sample's identity
            raise RuntimeError(
                f"failed to map dataset item {index} (file_name={d.get('file_name')!r}, image_id={d.get('image_id')!r}) "
                f"at epoch {epoch}, iteration {iteration}: {type(e).__name__}: {e}"
            ) from e
        self.progress.done()
        return out

    def __getitem__(self, descriptor: List[SampleDescriptor]) -> List[Dict]:
        batch = [self.map_one(*desc) for desc in descriptor]
        if self.multi_scale and descriptor:
            _, epoch, iteration = descriptor[0]
            if self.multi_scale_stop_epoch is None or epoch < self.multi_scale_stop_epoch:
                batch = resize_batch(batch, multi_scale_size(self.seed, iteration, self.multi_scale))
        return batch


class RTDETRTrainLoader:
    """Infinite, resumable, epoch-based training loader yielding per-rank batches.

    Iterating yields ``list[dict]`` of ``per_rank_batch_size`` mapped samples (see
    :class:`neo_rtdetr.data.dataset_mapper.RTDETRDatasetMapper`). Call :meth:`set_start_iter`
    before iterating to resume (a new iteration starts new worker processes).

    Attributes:
        dataset_size: number of dataset items (after ``filter_empty``).
        total_batch_size: global batch size (all ranks).
        per_rank_batch_size: ``total_batch_size // world_size``.
        iters_per_epoch: ``dataset_size // total_batch_size`` (the last partial batch is dropped).
        seed: base seed of the permutations, sample seeds and multi-scale sizes.
        start_iter: first iteration produced by the next ``iter()``.
        world_size, rank: from ``detectron2.utils.comm``.
        multi_scale, multi_scale_stop_epoch, pack_batches: see :func:`build_rtdetr_train_loader`.
    """

    def __init__(
        self,
        *,
        dataset,
        mapper: Callable,
        total_batch_size: int,
        num_workers: int = 4,
        pin_memory: bool = True,
        pack_batches: bool = True,
        seed: int = 0,
        multi_scale: Optional[Sequence[int]] = None,
        multi_scale_stop_epoch: Optional[int] = None,
    ):
        self.world_size = comm.get_world_size()
        self.rank = comm.get_rank()
        if total_batch_size <= 0 or total_batch_size % self.world_size != 0:
            raise ValueError(
                f"total_batch_size ({total_batch_size}) must be a positive multiple of the world size ({self.world_size})"
            )
        self.dataset = dataset
        self.mapper = mapper
        self.dataset_size = len(dataset)
        self.total_batch_size = int(total_batch_size)
        self.per_rank_batch_size = self.total_batch_size // self.world_size
        self.iters_per_epoch = self.dataset_size // self.total_batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(f"the dataset has {self.dataset_size} items, fewer than total_batch_size={total_batch_size}")
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.pack_batches = bool(pack_batches)
        self.seed = _check_seed(seed)
        if multi_scale is not None:
            multi_scale = [int(s) for s in multi_scale]
            if not multi_scale or min(multi_scale) <= 0:
                raise ValueError(f"multi_scale must be a non-empty list of positive sizes, got {multi_scale}")
        self.multi_scale = multi_scale
        self.multi_scale_stop_epoch = multi_scale_stop_epoch
        self.start_iter = 0
        self._perm_cache: Tuple[int, Optional[torch.Tensor]] = (-1, None)

    def __len__(self) -> int:
        """Iterations per epoch (the loader itself is infinite)."""
        return self.iters_per_epoch

    def set_start_iter(self, iteration: int) -> None:
        """Make the next ``iter()`` start at global iteration ``iteration`` (resume)."""
        if iteration < 0:
            raise ValueError(f"start iteration must be >= 0, got {iteration}")
        self.start_iter = int(iteration)

    def epoch_of(self, iteration: int) -> int:
        """The epoch of a global iteration."""
        return iteration // self.iters_per_epoch

    def batch_descriptor(self, iteration: int) -> List[SampleDescriptor]:
        """This rank's samples at ``iteration``: [(dataset index, epoch, iteration)] * per_rank."""
        epoch = self.epoch_of(iteration)
        cached_epoch, perm = self._perm_cache
        if cached_epoch != epoch:
            perm = epoch_permutation(self.seed, epoch, self.dataset_size)
            self._perm_cache = (epoch, perm)
        start = (iteration % self.iters_per_epoch) * self.total_batch_size + self.rank * self.per_rank_batch_size
        indices = perm[start : start + self.per_rank_batch_size].tolist()
        return [(int(i), epoch, int(iteration)) for i in indices]

    def _data_loader(self, batch_dataset: "_BatchMapDataset") -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            batch_dataset,
            batch_size=None,
            sampler=_BatchDescriptorSampler(self, self.start_iter),
            num_workers=workers,
            # a worker sends its batch as one shared-memory buffer (neo_rtdetr/data/packed_batch.py), not one per tensor
            collate_fn=PackedBatch.pack if workers > 0 and self.pack_batches else _identity,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # The workers' base seed comes from this generator, not from torch's global RNG, so that
            # creating the iterator (at the first step, also after a resume) does not shift the
            # global random stream that the model's denoising noise draws from.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def __iter__(self) -> Iterator[List[Dict]]:
        batch_dataset = _BatchMapDataset(self.dataset, self.mapper, self.seed, self.multi_scale,
                                         self.multi_scale_stop_epoch, self.num_workers)
        iterator = iter(self._data_loader(batch_dataset))
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as e:
                culprit = batch_dataset.explain_dead_worker(e)
                if culprit:
                    raise RuntimeError(f"{str(e).rstrip('. ')}. The train loader's {culprit}.") from e
                raise
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch


def _as_dataset(dataset):
    """A list of dicts becomes a serialised DatasetFromList (cheap to share with workers)."""
    if isinstance(dataset, list):
        return DatasetFromList(dataset, copy=False, serialize=True)
    return dataset


def _has_instances(d: Dict) -> bool:
    return any(int(a.get("iscrowd", 0)) == 0 for a in d.get("annotations", []))


def build_rtdetr_train_loader(
    *,
    dataset,
    mapper: Callable,
    total_batch_size: int,
    num_workers: int = 4,
    pin_memory: bool = True,
    pack_batches: bool = True,
    seed: int = 0,
    multi_scale: Optional[Sequence[int]] = None,
    multi_scale_stop_epoch: Optional[int] = None,
    filter_empty: bool = False,
) -> RTDETRTrainLoader:
    """Build the infinite epoch-based RT-DETR training loader.

    Args:
        dataset: list of detectron2 dataset dicts, or a detectron2 ``DatasetFromList`` (any
            indexable with ``__len__``).
        mapper: callable mapping one dataset dict (with ``_epoch`` and ``_sample_seed`` added) to
            a model input, normally ``RTDETRDatasetMapper(is_train=True, ...)``.
        total_batch_size: images per iteration over all ranks (a multiple of the world size).
        num_workers: DataLoader worker processes (0 = map in the main process).
        pin_memory: pin batches (only when CUDA is available).
        pack_batches: a worker sends its batch as one shared-memory buffer
            (:class:`~neo_rtdetr.data.packed_batch.PackedBatch`; its tensors must be plain CPU tensors without
            autograd) instead of one per tensor; False: PyTorch's own per-tensor sharing.
        seed: base seed of the epoch permutations, the sample seeds and the multi-scale sizes.
        multi_scale: square sizes to resize each batch to (e.g. official
            ``[480, 512, ..., 800]``); None disables multi-scale.
        multi_scale_stop_epoch: no multi-scale from this epoch on (None = never stop).
        filter_empty: drop images without any non-crowd annotation (official: False).

    Returns:
        A :class:`RTDETRTrainLoader`.
    """
    if filter_empty:
        before = len(dataset)
        dataset = [d for d in (dataset[i] for i in range(before)) if _has_instances(d)]
        logger.info("Removed %d images without non-crowd annotations; %d left", before - len(dataset), len(dataset))
    return RTDETRTrainLoader(
        dataset=_as_dataset(dataset),
        mapper=mapper,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        pack_batches=pack_batches,
        seed=seed,
        multi_scale=multi_scale,
        multi_scale_stop_epoch=multi_scale_stop_epoch,
    )


def build_rtdetr_test_loader(*, dataset, mapper: Callable, batch_size: int = 8, num_workers: int = 4) -> DataLoader:
    """Batched inference loader (detectron2 v0.6's ``build_detection_test_loader`` is batch size 1).

    Each rank gets its contiguous shard of the dataset (``InferenceSampler``); every image is
    produced exactly once over all ranks. Batches are lists of mapped dicts (the last may be
    smaller).

    Args:
        dataset: list of dataset dicts or an indexable dataset.
        mapper: normally ``RTDETRDatasetMapper(is_train=False, ...)``.
        batch_size: images per batch on each rank.
        num_workers: DataLoader worker processes.

    Returns:
        A ``torch.utils.data.DataLoader`` yielding ``list[dict]``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dataset = MapDataset(_as_dataset(dataset), mapper)
    sampler = InferenceSampler(len(dataset))
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=trivial_batch_collator)
