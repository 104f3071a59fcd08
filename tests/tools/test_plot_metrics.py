"""tools/plot_metrics.py and neo_rtdetr.utils.metrics_plot on a metrics.json written here."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_metrics(path, iters=60, with_eval=True, with_lr=True):
    """Detectron2 JSONWriter-like lines: train scalars every iteration, eval results twice."""
    lines = []
    for it in range(iters):
        row = {"iteration": it, "total_loss": 40.0 - it * 0.5, "data_time": 0.01, "time": 0.2}
        for term, base in (("vfl", 1.0), ("bbox", 2.0), ("giou", 1.5)):
            row[f"loss_{term}"] = base - it * 0.01
            for i in range(2):
                row[f"loss_{term}_aux_{i}"] = base + 0.1 * (i + 1) - it * 0.01
            row[f"loss_{term}_enc_0"] = base + 0.3 - it * 0.01
            for i in range(3):
                row[f"loss_{term}_dn_{i}"] = base * 0.5 + 0.05 * i - it * 0.005
        if with_lr:
            row["lr"] = 1e-4 * min(1.0, (it + 1) / 20)
        lines.append(json.dumps(row))
        if with_eval and it in (29, 59):
            lines.append(json.dumps({"iteration": it, "bbox/AP": it / 2, "bbox/AP50": it, "bbox/APs": 1.0,
                                     "bbox/APm": 2.0, "bbox/APl": 3.0, "bbox/AP-circle": 5.0}))
    lines.insert(10, json.dumps({"iteration": 5, "total_loss": 99.0}))  # a resumed run re-logs iteration 5
    path.write_text("\n".join(lines) + "\n" + '{"iteration": 60, "total_lo')  # last line cut short
    return path


def _coloured_pixels(png):
    from matplotlib.image import imread

    img = imread(str(png))[..., :3]
    assert img.shape[0] >= 300 and img.shape[1] >= 500
    saturation = img.max(-1) - img.min(-1)  # 0 for white/grey/black (axes, text), > 0 for the coloured curves
    return int((saturation > 0.3).sum()), img


def test_load_metrics_dedups_sorts_and_skips_broken_lines(tmp_path):
    from neo_rtdetr.utils.metrics_plot import load_metrics

    metrics = load_metrics(str(_write_metrics(tmp_path / "metrics.json")))
    its, vals = metrics["total_loss"]
    assert its == list(range(60))
    assert vals[5] == 99.0 and vals[6] == 40.0 - 6 * 0.5  # the later line of iteration 5 wins
    assert metrics["bbox/AP"] == ([29, 59], [14.5, 29.5])
    assert "iteration" not in metrics and "bbox/AP75" not in metrics


def test_tool_writes_all_plots(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    metrics = _write_metrics(tmp_path / "run" / "metrics.json")
    out = tmp_path / "plots"
    assert _load_tool("plot_metrics").main(["--metrics", str(metrics), "--output", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ap.png", "loss.png", "loss_aux.png", "loss_dn.png", "loss_enc.png", "lr.png"]
    printed = capsys.readouterr().out
    assert all(str(out / n) in printed for n in names)
    # each plot has its curves drawn: many coloured pixels (an empty axes has only black/grey/white)
    minimum = {"loss.png": 1500, "loss_aux.png": 2000, "loss_dn.png": 3000, "loss_enc.png": 1000,
               "lr.png": 400, "ap.png": 200}
    for name, least in minimum.items():
        n, _ = _coloured_pixels(out / name)
        assert n >= least, (name, n)
    # one panel per loss term (vfl, bbox, giou) in the group plots: three times as wide as a single plot
    _, aux = _coloured_pixels(out / "loss_aux.png")
    _, lr = _coloured_pixels(out / "lr.png")
    assert aux.shape[1] > 2 * lr.shape[1]


def test_missing_metrics_are_skipped(tmp_path):
    from neo_rtdetr.utils.metrics_plot import load_metrics, plot_metrics

    metrics = load_metrics(str(_write_metrics(tmp_path / "metrics.json", iters=10, with_eval=False, with_lr=False)))
    written = plot_metrics(metrics, str(tmp_path / "plots"))
    assert sorted(written) == ["loss", "loss_aux", "loss_dn", "loss_enc"]
    assert not (tmp_path / "plots" / "ap.png").exists() and not (tmp_path / "plots" / "lr.png").exists()
    # only AP: a single plot
    only_ap = plot_metrics({"bbox/AP": ([0, 10], [1.0, 2.0])}, str(tmp_path / "ap_only"))
    assert list(only_ap) == ["ap"]
    assert _coloured_pixels(tmp_path / "ap_only" / "ap.png")[0] >= 50


def test_missing_or_empty_file_is_a_clear_error(tmp_path, capsys):
    tool = _load_tool("plot_metrics")
    missing = tmp_path / "nope" / "metrics.json"
    assert tool.main(["--metrics", str(missing), "--output", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and str(missing) in err
    empty = tmp_path / "metrics.json"
    empty.write_text("\n")
    assert tool.main(["--metrics", str(empty), "--output", str(tmp_path / "p")]) == 1
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
