"""Bad COCO JSON: each problem is either handled (dropped/clipped, counted in one warning) or
rejected when the dataset is loaded, with a message naming the file and the ids.

Every dataset is written here (tmp_path) and goes through the real path: registration with
``register_coco_format_dataset`` and ``DatasetCatalog.get``.
"""

import itertools
import json
import logging

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from neo_rtdetr.data.catalog import check_dataset_files, register_coco_format_dataset
from neo_rtdetr.data.validation import CocoFormatError, read_coco_json, validate_coco_dict

_names = itertools.count()


def _coco(images=None, annotations=None, categories=None):
    if images is None:
        images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200},
                  {"id": 2, "file_name": "b.jpg", "height": 50, "width": 60}]
    if categories is None:
        categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    if annotations is None:
        annotations = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _load(tmp_path, content, *, raw=False):
    """Write ``content`` (a dict, or raw text when ``raw``) and load it as a registered dataset."""
    name = f"t_bad_coco_{next(_names)}"
    path = tmp_path / f"{name}.json"
    path.write_text(content if raw else json.dumps(content))
    register_coco_format_dataset(name=name, json_file=str(path), image_root=str(tmp_path))
    return name, str(path), (lambda: DatasetCatalog.get(name))


def _rejected(tmp_path, content, *, raw=False):
    _, path, load = _load(tmp_path, content, raw=raw)
    with pytest.raises(CocoFormatError) as excinfo:
        load()
    message = str(excinfo.value)
    assert path in message  # every rejection names the file
    return message


def test_malformed_json_is_rejected_with_file_line_and_column(tmp_path):
    text = '{"images": [\n  {"id": 1, "file_name": "a.jpg",}]}'  # trailing comma on line 2
    message = _rejected(tmp_path, text, raw=True)
    column = text.splitlines()[1].index(",}") + 2  # 1-based column of the '}'
    assert "is not valid JSON" in message and f"line 2, column {column}" in message
    truncated = json.dumps(_coco())[:-20]  # a file cut short (e.g. a copy that was interrupted)
    assert "is not valid JSON" in _rejected(tmp_path, truncated, raw=True)


def test_top_level_not_an_object_and_missing_lists_are_rejected(tmp_path):
    assert "got a list" in _rejected(tmp_path, "[1, 2]", raw=True)
    assert "no 'images' list" in _rejected(tmp_path, {"annotations": [], "categories": []})
    assert "'categories' is empty" in _rejected(tmp_path, _coco(categories=[]))


def test_empty_dataset_is_rejected(tmp_path):
    assert "the dataset is empty" in _rejected(tmp_path, _coco(images=[], annotations=[]))


def test_duplicate_image_ids_are_rejected_naming_them(tmp_path):
    images = [{"id": i, "file_name": f"{n}.jpg", "height": 10, "width": 10} for n, i in enumerate([5, 6, 5, 8, 8])]
    message = _rejected(tmp_path, _coco(images=images, annotations=[]))
    assert "duplicate image ids 5, 8" in message


def test_annotations_pointing_at_missing_images_are_rejected_naming_both_ids(tmp_path):
    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 11, "image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5]}]
    message = _rejected(tmp_path, _coco(annotations=anns))
    assert "1 annotations point at image ids that are not in 'images'" in message
    assert "11 -> image 99" in message


def test_category_ids_missing_from_categories_are_rejected(tmp_path):
    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 11, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5]},
            {"id": 12, "image_id": 2, "category_id": 4, "bbox": [0, 0, 5, 5]}]
    message = _rejected(tmp_path, _coco(annotations=anns))
    assert "unknown category ids 4" in message and "annotation ids 11, 12" in message and "known category ids 3, 7" in message


def test_other_structural_errors_are_rejected(tmp_path):
    dup_ann = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}] * 2
    assert "duplicate annotation ids 10" in _rejected(tmp_path, _coco(annotations=dup_ann))
    bad_bbox = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5]},
                {"id": 11, "image_id": 1, "category_id": 3, "bbox": "0 0 5 5"}]
    assert "'bbox' is not a list of 4 numbers" in _rejected(tmp_path, _coco(annotations=bad_bbox))
    no_size = [{"id": 1, "file_name": "a.jpg", "height": 0, "width": 10}, {"id": 2, "file_name": "b.jpg"}]
    assert "positive integer 'height' and 'width': ids 1, 2" in _rejected(tmp_path, _coco(images=no_size, annotations=[]))
    dup_cat = [{"id": 3, "name": "a"}, {"id": 3, "name": "b"}]
    assert "duplicate category ids 3" in _rejected(tmp_path, _coco(categories=dup_cat, annotations=[]))


def test_fixable_annotations_are_dropped_or_clipped_with_one_summary_warning(tmp_path, caplog):
    nan, inf = float("nan"), float("inf")
    anns = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},  # fine
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 20, 0, 40]},  # zero width
        {"id": 12, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, -5]},  # negative height
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [nan, 20, 30, 40]},  # NaN (json writes NaN)
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [10, 20, inf, 40]},  # inf
        {"id": 15, "image_id": 1, "category_id": 3, "bbox": [10, None, 30, 40]},  # null
        {"id": 16, "image_id": 1, "category_id": 7, "bbox": [-10, 80, 50, 40]},  # partly outside: clipped
        {"id": 17, "image_id": 1, "category_id": 3, "bbox": [250, 20, 30, 40]},  # entirely outside: dropped
        {"id": 18, "image_id": 1, "category_id": 3, "bbox": [0, 0, 200, 100], "iscrowd": 1},  # crowd
    ]
    images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200},
              {"id": 2, "file_name": "b.jpg", "height": 50, "width": 60},  # no annotations: kept
              {"id": 3, "file_name": "c.jpg", "height": 50, "width": 60}]
    name, path, load = _load(tmp_path, _coco(images=images, annotations=anns))
    with caplog.at_level(logging.INFO, logger="neo_rtdetr.data.coco_json"):
        dicts = load()
        load()  # detectron2 calls the loader each time the dataset is requested: still one warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    w = warnings[0]
    assert w.startswith(f"{name} ({path}): dropped 7 of 9 annotations")
    assert "2 with zero or negative width/height (ids 11, 12)" in w
    assert "3 with NaN/inf/null coordinates (ids 13, 14, 15)" in w
    assert "1 entirely outside their image (ids 17)" in w
    assert "1 crowd (iscrowd=1" in w and "(ids 18)" in w
    assert "Clipped 1 boxes partly outside their image to the image (ids 16)" in w
    assert "Kept 2 annotations on 3 images (2 images without annotations, kept as negatives)" in w

    assert [d["image_id"] for d in dicts] == [1, 2, 3]  # images without annotations stay
    by_id = {a["id"]: a for a in dicts[0]["annotations"]}
    assert sorted(by_id) == [10, 16]
    assert by_id[10]["bbox"] == [10.0, 20.0, 30.0, 40.0] and by_id[10]["category_id"] == 0
    assert by_id[16]["bbox"] == [0.0, 80.0, 40.0, 20.0]  # [-10, 80]..[40, 120] clipped to 200x100
    assert by_id[16]["category_id"] == 1 and by_id[16]["bbox_mode"] == BoxMode.XYWH_ABS
    assert dicts[1]["annotations"] == [] and dicts[2]["annotations"] == []
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}


def test_a_clean_file_logs_no_warning(tmp_path, caplog):
    _, _, load = _load(tmp_path, _coco())
    with caplog.at_level(logging.INFO, logger="neo_rtdetr.data.coco_json"):
        load()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("Kept 1 annotations on 2 images (1 images without annotations" in r.getMessage() for r in caplog.records)


def test_a_dataset_without_annotations_loads_with_a_warning(tmp_path, caplog):
    content = _coco(annotations=[])
    del content["annotations"]  # image-info files (e.g. COCO test-dev) have no 'annotations' at all
    name, _, load = _load(tmp_path, content)
    with caplog.at_level(logging.WARNING, logger="neo_rtdetr.data.coco_json"):
        dicts = load()
    assert len(dicts) == 2 and all(d["annotations"] == [] for d in dicts)
    assert any(f"{name}: no usable annotations (0 in the file)" in r.getMessage() for r in caplog.records)


def test_same_dicts_as_detectron2_load_coco_json_on_a_clean_file(synthetic_root):
    """The validated loader is a drop-in for detectron2's (plus the annotation id)."""
    from detectron2.data.datasets import load_coco_json

    from neo_rtdetr.data.coco_json import load_coco_detection_json
    from neo_rtdetr.data.synthetic import synthetic_paths

    json_file, image_root = synthetic_paths(synthetic_root, "train")
    ours = load_coco_detection_json(json_file, image_root, "t_bad_coco_ours")
    theirs = load_coco_json(json_file, image_root, "t_bad_coco_d2")
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in a.items() if k != "annotations"} == {k: v for k, v in b.items() if k != "annotations"}
        assert [{k: v for k, v in x.items() if k != "id"} for x in a["annotations"]] == b["annotations"]
    for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
        assert getattr(MetadataCatalog.get("t_bad_coco_ours"), key) == getattr(MetadataCatalog.get("t_bad_coco_d2"), key)


def test_validate_coco_dict_does_not_modify_its_input():
    data = _coco(annotations=[{"id": 16, "image_id": 1, "category_id": 7, "bbox": [-10, 80, 50, 40]}])
    before = json.dumps(data)
    clean, report = validate_coco_dict(data, source="mem")
    assert json.dumps(data) == before
    assert clean["annotations"][0]["bbox"] == [0.0, 80.0, 40.0, 20.0] and report.clipped == [16]
    assert report.num_kept == 1 and not report.num_dropped


class _PrefixHandler(PathHandler):
    """``neo-test-coco://<absolute path>``: a URI that only ``PathManager.get_local_path`` resolves."""

    PREFIX = "neo-test-coco://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        return path[len(self.PREFIX):]


def test_annotation_uri_is_resolved_with_path_manager(tmp_path):
    PathManager.register_handler(_PrefixHandler())
    path = tmp_path / "uri.json"
    path.write_text(json.dumps(_coco()))
    uri = _PrefixHandler.PREFIX + str(path)
    assert read_coco_json(uri) == _coco()
    name = f"t_bad_coco_{next(_names)}"
    register_coco_format_dataset(name=name, json_file=uri, image_root=str(tmp_path))
    check_dataset_files([name])  # the early file check accepts the URI (its handler cannot say whether it exists)
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [1, 2] and len(dicts[0]["annotations"]) == 1
    # a URI (or path) to no file is still a clear error naming it as given
    missing = _PrefixHandler.PREFIX + str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=f"COCO annotation file {missing} does not exist"):
        read_coco_json(missing)
    with pytest.raises(FileNotFoundError, match=f"COCO annotation file {tmp_path / 'missing.json'} does not exist"):
        read_coco_json(tmp_path / "missing.json")
