#!/usr/bin/env python3
"""Generate (first use only) and register the embedded synthetic dataset; print where and what.

    python tools/build_synthetic_dataset.py [--cache-dir DIR]
"""

import argparse
import collections
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="default: $NEO_RTDETR_CACHE or ~/.cache/neo_rtdetr")
    args = parser.parse_args(argv)

    from neo_rtdetr.data.catalog import SYNTHETIC_TRAIN, SYNTHETIC_VAL, register_synthetic_dataset
    from neo_rtdetr.data.synthetic import SYNTHETIC_CLASSES, synthetic_paths

    root = register_synthetic_dataset(cache_dir=args.cache_dir)
    print(f"synthetic dataset: {root}")
    for split, name in (("train", SYNTHETIC_TRAIN), ("val", SYNTHETIC_VAL)):
        json_file, image_root = synthetic_paths(root, split)
        coco = json.load(open(json_file))
        per_class = collections.Counter(a["category_id"] for a in coco["annotations"])
        empty = len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]})
        counts = ", ".join(f"{SYNTHETIC_CLASSES[c - 1]} {per_class[c]}" for c in sorted(per_class))
        print(f"  {name}: {len(coco['images'])} images ({empty} without objects), "
              f"{len(coco['annotations'])} boxes ({counts})")
        print(f"    json_file={json_file}\n    image_root={image_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
