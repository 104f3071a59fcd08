"""Read a Detectron2 ``metrics.json`` and plot RT-DETR's training curves (logic of ``tools/plot_metrics.py``).

``metrics.json`` (Detectron2's ``JSONWriter``) holds one JSON object per line: ``iteration`` plus
the scalars written at that iteration (smoothed losses, ``lr``, timings; after an evaluation the
``bbox/AP*`` results). A resumed run appends lines for iterations already written: the last value
of an (iteration, metric) pair wins.

Plots (PNG, one file per group; a group without any of its metrics is skipped):

* ``loss.png``: ``total_loss`` and the main terms ``loss_vfl`` / ``loss_bbox`` / ``loss_giou``;
* ``loss_aux.png``, ``loss_enc.png``, ``loss_dn.png``: the auxiliary decoder layers
  (``loss_*_aux_{i}``), the encoder query selection (``loss_*_enc_{i}``) and the denoising part
  (``loss_*_dn_{i}``): one panel per term (vfl, bbox, giou), one line per layer;
* ``lr.png``: the learning rate;
* ``ap.png``: ``bbox/AP`` and, when present, ``bbox/AP50``, ``bbox/AP75``, ``bbox/APs``, ``bbox/APm``, ``bbox/APl``.

Drawing uses matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

import json
import logging
import math
import os
import re
from typing import Dict, List, Sequence, Tuple

__all__ = ["Series", "load_metrics", "plot_metrics", "MAIN_LOSSES", "AP_METRICS", "LOSS_TERMS", "LOSS_GROUPS"]

logger = logging.getLogger(__name__)

#: One metric: (iterations, values), sorted by iteration.
Series = Tuple[List[int], List[float]]

MAIN_LOSSES = ("total_loss", "loss_vfl", "loss_bbox", "loss_giou")
AP_METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl")
LOSS_TERMS = ("vfl", "bbox", "giou")
#: group suffix -> (file stem, title)
LOSS_GROUPS = {
    "aux": ("loss_aux", "auxiliary decoder layers"),
    "enc": ("loss_enc", "encoder query selection"),
    "dn": ("loss_dn", "denoising"),
}
_GROUP_KEY = re.compile(r"^loss_(?P<term>[a-z0-9]+)_(?P<group>[a-z]+)_(?P<index>\d+)$")


def load_metrics(path: str) -> Dict[str, Series]:
    """Read a Detectron2 ``metrics.json`` into per-metric series.

    Args:
        path: the file (one JSON object per line, each with an ``iteration``).

    Returns:
        metric name -> (iterations, values), sorted by iteration; for a repeated (iteration,
        metric) the last value in the file is kept. Non-numeric and non-finite values are ignored.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty or has no line with an ``iteration`` and a numeric metric.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file not found: {path} (training writes it to train.output_dir/metrics.json)")
    values: Dict[str, Dict[int, float]] = {}
    bad_lines = 0
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError):
                bad_lines += 1  # e.g. a line cut short by an interrupted write
                continue
            if not isinstance(record, dict):
                bad_lines += 1
                continue
            for key, value in record.items():
                if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    values.setdefault(key, {})[iteration] = float(value)
    if bad_lines:
        logger.warning("%s: skipped %d unreadable line(s)", path, bad_lines)
    if not values:
        raise ValueError(
            f"metrics file {path} has no metrics: it is empty or has no JSON line with an 'iteration' "
            f"and a numeric value ({bad_lines} unreadable line(s))"
        )
    out: Dict[str, Series] = {}
    for key, per_iter in values.items():
        its = sorted(per_iter)
        out[key] = (its, [per_iter[i] for i in its])
    return out


def _new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _plot_lines(ax, metrics: Dict[str, Series], keys: Sequence[str], labels: Sequence[str] = None, marker=None) -> int:
    n = 0
    for i, key in enumerate(keys):
        if key not in metrics:
            continue
        its, vals = metrics[key]
        ax.plot(its, vals, label=labels[i] if labels else key, marker=marker, linewidth=1.2)
        n += 1
    if n:
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return n


def _save(fig, output_dir: str, stem: str) -> str:
    path = os.path.join(output_dir, stem + ".png")
    fig.savefig(path)
    return path


def _group_keys(metrics: Dict[str, Series], group: str) -> Dict[str, List[Tuple[int, str]]]:
    """term -> sorted [(layer index, key)] of the metrics of a loss group."""
    found: Dict[str, List[Tuple[int, str]]] = {}
    for key in metrics:
        m = _GROUP_KEY.match(key)
        if m and m.group("group") == group:
            found.setdefault(m.group("term"), []).append((int(m.group("index")), key))
    return {t: sorted(v) for t, v in found.items()}


def plot_metrics(metrics: Dict[str, Series], output_dir: str, *, title: str = "") -> Dict[str, str]:
    """Write the PNG plots of :func:`load_metrics`'s series (groups without data are skipped).

    Args:
        metrics: from :func:`load_metrics`.
        output_dir: folder for the PNG files (created).
        title: prefix of every plot title (e.g. the run's name).

    Returns:
        plot stem (``loss``, ``loss_aux``, ``loss_enc``, ``loss_dn``, ``lr``, ``ap``) -> written path.
    """
    os.makedirs(output_dir, exist_ok=True)
    prefix = f"{title}: " if title else ""
    written: Dict[str, str] = {}

    main = [k for k in MAIN_LOSSES if k in metrics]
    if main:
        has_total = "total_loss" in metrics
        terms = [k for k in main if k != "total_loss"]
        fig, axes = _new_figure(ncols=int(has_total) + int(bool(terms)))
        if has_total:
            _plot_lines(axes[0], metrics, ["total_loss"])
            axes[0].set_title(f"{prefix}total loss")
        if terms:
            _plot_lines(axes[-1], metrics, terms)
            axes[-1].set_title(f"{prefix}main losses (last decoder layer, weighted)")
        written["loss"] = _save(fig, output_dir, "loss")

    for group, (stem, description) in LOSS_GROUPS.items():
        by_term = _group_keys(metrics, group)
        if not by_term:
            continue
        terms = [t for t in LOSS_TERMS if t in by_term] + sorted(t for t in by_term if t not in LOSS_TERMS)
        fig, axes = _new_figure(ncols=len(terms), width=5.0)
        for ax, term in zip(axes, terms):
            keys = [k for _, k in by_term[term]]
            _plot_lines(ax, metrics, keys, labels=[f"{group} {i}" for i, _ in by_term[term]])
            ax.set_title(f"{prefix}loss_{term}, {description}")
        written[stem] = _save(fig, output_dir, stem)

    if "lr" in metrics:
        fig, axes = _new_figure()
        _plot_lines(axes[0], metrics, ["lr"])
        axes[0].set_title(f"{prefix}learning rate")
        written["lr"] = _save(fig, output_dir, "lr")

    ap = [k for k in AP_METRICS if k in metrics]
    if ap:
        fig, axes = _new_figure()
        _plot_lines(axes[0], metrics, ap, marker="o")
        axes[0].set_ylabel("AP (%)")
        axes[0].set_title(f"{prefix}COCO box AP")
        written["ap"] = _save(fig, output_dir, "ap")
    return written
