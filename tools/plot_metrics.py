#!/usr/bin/env python3
"""Plot the training curves of a run from its Detectron2 metrics.json (PNG files).

    python tools/plot_metrics.py --metrics output/rtdetr_tiny_synthetic_demo/metrics.json --output plots/

Writes, for the metrics present: loss.png (total_loss and loss_vfl / loss_bbox / loss_giou),
loss_aux.png, loss_enc.png, loss_dn.png (auxiliary decoder layers, encoder query selection,
denoising), lr.png and ap.png (bbox/AP and AP50 / AP75 / APs / APm / APl), against the iteration.
Metrics that are absent are skipped; a missing or empty file is an error.
"""

import argparse
import logging
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, help="metrics.json of a training run")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    p.add_argument("--title", default=None, help="prefix of the plot titles (default: the run folder's name)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")

    from neo_rtdetr.utils.metrics_plot import load_metrics, plot_metrics

    try:
        metrics = load_metrics(args.metrics)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    title = args.title if args.title is not None else os.path.basename(os.path.dirname(os.path.abspath(args.metrics)))
    written = plot_metrics(metrics, args.output, title=title)
    if not written:
        print(f"error: {args.metrics} has none of the plotted metrics (losses, lr, bbox/AP); "
              f"it has: {', '.join(sorted(metrics))}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
