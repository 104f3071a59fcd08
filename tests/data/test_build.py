"""RT-DETR loaders: resumable epoch-based order, epoch tags, multi-scale, ranks, test loader."""

import gc
import itertools

import pytest
import torch
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList

from neo_rtdetr.data import build as build_mod
from neo_rtdetr.data.build import (
    build_rtdetr_test_loader,
    build_rtdetr_train_loader,
    epoch_permutation,
    sample_seed,
)
from neo_rtdetr.data.dataset_mapper import RTDETRDatasetMapper
from neo_rtdetr.data.transforms import build_rtdetr_train_augmentations
from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

SIZE = 64


def _register(synthetic_root, split):
    from detectron2.data import DatasetCatalog

    from neo_rtdetr.data.catalog import register_coco_format_dataset
    from neo_rtdetr.data.synthetic import synthetic_paths

    json_file, image_root = synthetic_paths(synthetic_root, split)
    return DatasetCatalog.get(register_coco_format_dataset(name=f"t_data_syn_{split}", json_file=json_file,
                                                           image_root=image_root))


@pytest.fixture(scope="module")
def train_dicts(synthetic_root):
    return _register(synthetic_root, "train")


@pytest.fixture(scope="module")
def val_dicts(synthetic_root):
    return _register(synthetic_root, "val")


def _resize_mapper():
    return RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((SIZE, SIZE))])


def _take(loader, n, start=0):
    loader.set_start_iter(start)
    it = iter(loader)
    try:
        return [next(it) for _ in range(n)]
    finally:
        del it


def _ids(batches):
    return [[d["image_id"] for d in b] for b in batches]


def test_resume_continues_the_exact_sample_order(train_dicts):
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=build_rtdetr_train_augmentations(image_size=SIZE))
    data = train_dicts[:10]
    loader = build_rtdetr_train_loader(dataset=data, mapper=mapper, total_batch_size=3, num_workers=0, seed=5)
    assert loader.iters_per_epoch == 3 and loader.dataset_size == 10 and len(loader) == 3
    full = _take(loader, 8)
    resumed = _take(loader, 4, start=4)  # resume in the middle of epoch 1
    assert _ids(resumed) == _ids(full[4:])
    for a, b in zip(itertools.chain(*resumed), itertools.chain(*full[4:])):
        assert torch.equal(a["image"], b["image"])  # same augmentation too
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    # worker processes produce exactly the same batches as the main process
    loader_mp = build_rtdetr_train_loader(dataset=data, mapper=mapper, total_batch_size=3, num_workers=2, seed=5)
    mp = _take(loader_mp, 3, start=5)
    assert _ids(mp) == _ids(full[5:8])
    for a, b in zip(itertools.chain(*mp), itertools.chain(*full[5:8])):
        assert a.keys() == b.keys() and a["file_name"] == b["file_name"]
        assert torch.equal(a["image"], b["image"]) and a["image"].dtype == b["image"].dtype
        for field in ("gt_boxes", "gt_classes", TARGET_BOXES_FIELD):
            x, y = a["instances"].get(field), b["instances"].get(field)
            x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
            assert torch.equal(x, y) and x.dtype == y.dtype, field
    # ... sent as one buffer per batch (neo_rtdetr/data/packed_batch.py): every tensor of a batch lives in it
    for batch in mp:
        storages = {t.untyped_storage().data_ptr() for d in batch
                    for t in (d["image"], d["instances"].gt_classes, d["instances"].gt_boxes.tensor)}
        assert len(storages) == 1
    assert len({d["image"].untyped_storage().data_ptr() for d in full[5]}) == len(full[5])  # (in-process: not packed)
    # pack_batches=False: PyTorch's per-tensor sharing, the same batches
    unpacked = _take(build_rtdetr_train_loader(dataset=data, mapper=mapper, total_batch_size=3, num_workers=1, seed=5,
                                               pack_batches=False), 1, start=5)[0]
    assert [d["image_id"] for d in unpacked] == [d["image_id"] for d in full[5]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(unpacked, full[5]))
    assert len({d["image"].untyped_storage().data_ptr() for d in unpacked}) == len(unpacked)
    # another seed gives another order
    other = build_rtdetr_train_loader(dataset=data, mapper=mapper, total_batch_size=3, num_workers=0, seed=6)
    assert _ids(_take(other, 3)) != _ids(full[:3])


def test_epochs_are_permutations_and_tagged_across_the_boundary(train_dicts):
    data = train_dicts[:9]
    loader = build_rtdetr_train_loader(dataset=DatasetFromList(data, copy=False), mapper=_resize_mapper(),
                                       total_batch_size=4, num_workers=0, seed=1)
    assert loader.iters_per_epoch == 2  # drop_last: 9 // 4
    batches = _take(loader, 6)
    all_ids = {d["image_id"] for d in data}
    for it, batch in enumerate(batches):
        assert len(batch) == 4
        assert {d["_epoch"] for d in batch} == {it // 2}
    for epoch in range(3):
        ids = [i for b in batches[2 * epoch:2 * epoch + 2] for i in (d["image_id"] for d in b)]
        assert len(set(ids)) == 8 and set(ids) <= all_ids  # no repeats inside an epoch
        perm = epoch_permutation(1, epoch, 9)[:8].tolist()
        assert ids == [data[i]["image_id"] for i in perm]
    assert _ids(batches[0:2]) != _ids(batches[2:4])  # a fresh order every epoch
    # sample seeds depend on (seed, epoch, index)
    index_of = {d["image_id"]: i for i, d in enumerate(data)}
    for it, batch in enumerate(batches):
        for d in batch:
            assert d["_sample_seed"] == sample_seed(1, it // 2, index_of[d["image_id"]])
    assert sample_seed(1, 0, 3) != sample_seed(1, 1, 3) != sample_seed(2, 1, 3)


def test_multi_scale_varies_per_step_and_stops(train_dicts):
    scales = [32, 48, 80]
    loader = build_rtdetr_train_loader(dataset=train_dicts[:8], mapper=_resize_mapper(), total_batch_size=2,
                                       num_workers=0, seed=0, multi_scale=scales, multi_scale_stop_epoch=1)
    assert loader.iters_per_epoch == 4
    batches = _take(loader, 8)
    sizes = []
    for it, batch in enumerate(batches):
        (shape,) = {tuple(d["image"].shape) for d in batch}
        sizes.append(shape[1])
        assert shape[1] == shape[2]
        for d in batch:
            inst = d["instances"]
            assert inst.image_size == (shape[1], shape[2]) and d["image"].dtype == torch.uint8
            b = inst.gt_boxes.tensor
            c = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
            torch.testing.assert_close(c / shape[1], inst.get(TARGET_BOXES_FIELD))  # normalised boxes unchanged
    assert set(sizes[:4]) <= set(scales) and len(set(sizes[:4])) > 1  # changes from step to step in epoch 0
    assert sizes[4:] == [SIZE] * 4  # stopped from epoch 1
    # the same iteration always uses the same size (resume-safe)
    assert [b[0]["image"].shape[-1] for b in _take(loader, 3, start=1)] == sizes[1:4]
    # the resized images are the nearest-neighbour resize of the mapper's output
    ref = _resize_mapper()(dict(batches[0][0], _sample_seed=None))
    s = sizes[0]
    expected = torch.nn.functional.interpolate(ref["image"][None], size=(s, s), mode="nearest")[0]
    assert torch.equal(batches[0][0]["image"], expected)


def test_multi_scale_skips_batches_of_mixed_sizes():
    batch = [{"image": torch.zeros(3, 10, 12, dtype=torch.uint8)}, {"image": torch.zeros(3, 10, 10, dtype=torch.uint8)}]
    out = build_mod.resize_batch(batch, 20)
    assert [tuple(d["image"].shape) for d in out] == [(3, 10, 12), (3, 10, 10)]


def test_resize_batch_rescales_pixel_boxes_of_non_square_images():
    from detectron2.structures import Boxes, Instances

    inst = Instances((20, 40))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 2.0, 20.0, 10.0]]))
    inst.gt_classes = torch.tensor([3])
    inst.set(TARGET_BOXES_FIELD, torch.tensor([[0.3, 0.3, 0.4, 0.4]]))
    img = torch.arange(3 * 20 * 40, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(3, 20, 40)
    (out,) = build_mod.resize_batch([{"image": img, "instances": inst, "height": 7, "width": 9}], 80)
    assert out["image"].shape == (3, 80, 80) and out["image"].dtype == torch.uint8
    assert torch.equal(out["image"], img[:, torch.arange(80) // 4][:, :, torch.arange(80) // 2])  # nearest
    new = out["instances"]
    assert new.image_size == (80, 80) and (out["height"], out["width"]) == (7, 9)
    torch.testing.assert_close(new.gt_boxes.tensor, torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    assert torch.equal(new.gt_classes, inst.gt_classes) and torch.equal(new.get(TARGET_BOXES_FIELD), inst.get(TARGET_BOXES_FIELD))


def test_per_rank_batches(train_dicts, monkeypatch):
    data = train_dicts[:12]
    loader = build_rtdetr_train_loader(dataset=data, mapper=_resize_mapper(), total_batch_size=4, num_workers=0, seed=2)
    global_ids = _ids(_take(loader, 4))
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(build_mod.comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(build_mod.comm, "get_rank", lambda r=rank: r)
        ld = build_rtdetr_train_loader(dataset=data, mapper=_resize_mapper(), total_batch_size=4, num_workers=0, seed=2)
        assert ld.per_rank_batch_size == 2 and ld.iters_per_epoch == 3
        per_rank.append(_ids(_take(ld, 4)))
        assert all(len(b) == 2 for b in per_rank[-1])
    for it in range(4):
        assert per_rank[0][it] + per_rank[1][it] == global_ids[it]  # rank slices of the global batch
    with pytest.raises(ValueError, match="seed"):
        build_rtdetr_train_loader(dataset=data, mapper=_resize_mapper(), total_batch_size=4, seed=-1)
    monkeypatch.setattr(build_mod.comm, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="multiple of the world size"):
        build_rtdetr_train_loader(dataset=data, mapper=_resize_mapper(), total_batch_size=4)


def test_filter_empty_and_worker_errors_name_the_file(train_dicts, monkeypatch):
    n_empty = sum(not d["annotations"] for d in train_dicts)
    assert n_empty > 0
    loader = build_rtdetr_train_loader(dataset=train_dicts, mapper=_resize_mapper(), total_batch_size=2,
                                       num_workers=0, filter_empty=True)
    assert loader.dataset_size == len(train_dicts) - n_empty
    broken = [dict(d, file_name="/nonexistent/broken_image_123.jpg") for d in train_dicts[:4]]
    # torch waits MP_STATUS_CHECK_INTERVAL (5 s) for a worker that reported an error to exit: shorten it
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    loader = build_rtdetr_train_loader(dataset=broken, mapper=_resize_mapper(), total_batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match="broken_image_123.jpg") as excinfo:
        _take(loader, 1)
    assert "DataLoader worker" in str(excinfo.value)  # raised in the worker, re-raised here
    del excinfo
    gc.collect()  # shut the worker down while the short timeout is in force


def test_test_loader_batches_cover_every_image_once(val_dicts):
    mapper = RTDETRDatasetMapper(is_train=False, augmentations=[T.Resize((SIZE, SIZE))])
    loader = build_rtdetr_test_loader(dataset=val_dicts, mapper=mapper, batch_size=3, num_workers=0)
    batches = list(loader)
    n = len(val_dicts)
    assert [len(b) for b in batches] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    ids = [d["image_id"] for b in batches for d in b]
    assert ids == [d["image_id"] for d in val_dicts]  # each exactly once, in order
    assert all("instances" not in d and d["image"].shape == (3, SIZE, SIZE) for b in batches for d in b)
    loader_mp = build_rtdetr_test_loader(dataset=val_dicts, mapper=mapper, batch_size=4, num_workers=2)
    assert [d["image_id"] for b in loader_mp for d in b] == ids
