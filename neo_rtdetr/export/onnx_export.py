"""ONNX export of :class:`RTDETRDeployModel` and its verification against PyTorch with ONNX Runtime.

Graph contract (as the official RT-DETR export): inputs ``images`` ``[N, 3, H, W]`` float32 RGB in [0, 1] and
``orig_target_sizes`` ``[N, 2]`` float32 (w, h); outputs ``labels`` int64 ``[N, k]``, ``boxes`` float32
``[N, k, 4]`` (xyxy pixels), ``scores`` float32 ``[N, k]``. H and W are fixed at export; N is dynamic.

Tolerances of the comparison (float32 everywhere):

* ``SCORE_ATOL = 5e-4`` on the sigmoid scores. float32 is not exact: on the tiny test model (BN-calibrated
  random weights, activations up to ~40) PyTorch float32 already differs from float64 by 3.4e-5 in the
  scores (2e-4 in the logits), ONNX Runtime by 2.2e-5, and the two float32 runs by 4.8e-5: their conv / GEMM
  kernels sum in a different order. Deeper models (R50/R101, 6 decoder layers) accumulate more, so the bound
  keeps a 10x margin over that measurement; a real export defect (channel order, normalisation, position
  embedding, anchors, a baked-in batch size) moves scores by 1e-2 or more and changes labels.
* ``BOX_ATOL_REL = 1e-4`` on the boxes, measured relative to the image side (box difference in pixels
  divided by the image's (w, h, w, h)), so one bound holds at every resolution: 0.064 px at 640, 0.19 px on
  a 1920-wide frame, far below a pixel. The normalised boxes come out of a sigmoid after the last layer and
  agree to ~2e-6 (measured), hence the tighter bound.
* Labels must be equal. Detections whose scores tie within ``SCORE_ATOL`` have no well-defined order (the
  two top-k implementations may swap them, or swap the last one with the first one left out): they are
  matched as a set (same label, box within tolerance), and such swaps are reported, not counted as
  mismatches.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .deploy_model import RTDETRDeployModel, check_export_size

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "SCORE_ATOL",
    "BOX_ATOL_REL",
    "EXPORTERS",
    "export_onnx",
    "onnx_io_shapes",
    "create_session",
    "run_onnxruntime",
    "compare_detections",
    "Comparison",
    "verify_onnx",
    "random_inputs",
]

INPUT_NAMES = ("images", "orig_target_sizes")
OUTPUT_NAMES = ("labels", "boxes", "scores")
SCORE_ATOL = 5e-4
BOX_ATOL_REL = 1e-4
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
BATCH_AXIS = "N"


def export_onnx(
    deploy_model: RTDETRDeployModel,
    path: str,
    height: int,
    width: int,
    *,
    batch: int = 2,
    opset: Optional[int] = None,
    exporter: str = "torchscript",
) -> str:
    """Export ``deploy_model`` at ``height x width`` with a dynamic batch axis ``N``.

    Args:
        deploy_model: the module to export (eval mode, RepVgg fused).
        path: the ``.onnx`` file to write (weights embedded, no external data file).
        height, width: the fixed input size, multiples of 32.
        batch: batch size of the example input (>= 2: ``torch.export`` specialises a batch of 1).
        opset: ONNX opset; default 17 (torchscript) / 18 (dynamo). GridSample needs >= 16; the dynamo exporter
            emits opset 18 and cannot convert its graph down, so it needs >= 18.
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, the tracer: fast, any opset >= 16, the
            default) or ``"dynamo"`` (``torch.export``-based, needs ``onnxscript``; ~4x slower to export, gives
            a static top-k dimension in the output shapes). Both were checked against ONNX Runtime.

    Returns:
        ``path``.
    """
    check_export_size(height, width, deploy_model.size_divisibility)
    if batch < 2:
        raise ValueError(f"export batch must be >= 2 (a batch of 1 gets specialised into the graph), got {batch}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    min_opset = 18 if exporter == "dynamo" else 16
    opset = DEFAULT_OPSET[exporter] if opset is None else int(opset)
    if opset < min_opset:
        why = ("the dynamo exporter emits opset 18 and cannot convert this graph to a lower one; use "
               "--exporter torchscript for opset 16/17" if exporter == "dynamo"
               else "GridSample (the deformable attention) needs opset >= 16")
        raise ValueError(f"opset {opset} < {min_opset}: {why}")
    deploy_model = deploy_model.eval()
    images, sizes = random_inputs(batch, height, width, seed=0)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every shape check it turns into a constant: H and W are fixed on purpose
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        common = dict(input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), opset_version=opset)
        if exporter == "torchscript":
            dynamic_axes = {name: {0: BATCH_AXIS} for name in INPUT_NAMES + OUTPUT_NAMES}
            torch.onnx.export(deploy_model, (images, sizes), path, dynamic_axes=dynamic_axes, dynamo=False, **common)
            _set_static_topk_dim(path, deploy_model.num_detections)
        else:
            n = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
            torch.onnx.export(
                deploy_model,
                (images, sizes),
                path,
                dynamic_shapes={"images": {0: n}, "orig_target_sizes": {0: n}},
                dynamo=True,
                external_data=False,
                **common,
            )
    return path


def _set_static_topk_dim(path: str, k: int) -> None:
    """Declare the top-k axis of the outputs as the constant ``k`` (the tracer leaves it symbolic although TopK's
    k is a constant in the graph), so that consumers such as TensorRT see static output shapes."""
    import onnx

    model = onnx.load(path)
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 2 and not dims[1].HasField("dim_value"):
            dims[1].Clear()
            dims[1].dim_value = int(k)
    onnx.save(model, path)


def onnx_io_shapes(path: str) -> Dict[str, List]:
    """``{name: [dim, ...]}`` for the graph's inputs and outputs; a dim is an int or its symbolic name (str)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    shapes = {}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = []
        for d in value.type.tensor_type.shape.dim:
            dims.append(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?"))
        shapes[value.name] = dims
    return shapes


def random_inputs(batch: int, height: int, width: int, *, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images uniform in [0, 1] and per-image original sizes (w, h) between half and twice the input size."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=g)
    scale = 0.5 + 1.5 * torch.rand(batch, 2, generator=g)
    sizes = (scale * torch.tensor([float(width), float(height)])).round()
    return images, sizes


def create_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for ``path`` (``threads``: intra-op threads, default ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(path_or_session, images, orig_target_sizes, *, threads: Optional[int] = None):
    """Run the exported graph (a path or a session from :func:`create_session`); returns numpy
    ``(labels, boxes, scores)``."""
    sess = path_or_session
    if isinstance(path_or_session, (str, os.PathLike)):
        sess = create_session(path_or_session, threads)
    feeds = {
        "images": np.ascontiguousarray(np.asarray(images, dtype=np.float32)),
        "orig_target_sizes": np.ascontiguousarray(np.asarray(orig_target_sizes, dtype=np.float32)),
    }
    out = sess.run(list(OUTPUT_NAMES), feeds)
    return tuple(out)


@dataclasses.dataclass
class Comparison:
    """Result of :func:`compare_detections` for one batch."""

    batch: int
    shapes_ok: bool
    label_mismatches: int  # detections with no partner (same label, close score and box) in the other output
    tie_swaps: int  # detections found at another position, among scores tied within the tolerance
    cutoff_ties: int  # detections tied with the top-k cut-off score, replaced by another tied one (unverifiable)
    scores_max_abs: float  # over matched detections, and between the sorted score lists
    boxes_max_abs_px: float
    boxes_max_rel: float  # box difference divided by the image's (w, h, w, h)
    score_atol: float = SCORE_ATOL
    box_atol_rel: float = BOX_ATOL_REL

    @property
    def ok(self) -> bool:
        return (
            self.shapes_ok
            and self.label_mismatches == 0
            and self.scores_max_abs <= self.score_atol
            and self.boxes_max_rel <= self.box_atol_rel
        )

    def summary(self) -> str:
        ties = []
        if self.tie_swaps:
            ties.append(f"{self.tie_swaps} order swaps among tied scores")
        if self.cutoff_ties:
            ties.append(f"{self.cutoff_ties} swapped at the top-k cut-off")
        labels = "equal" if self.label_mismatches == 0 else f"{self.label_mismatches} differ"
        ties_text = f" ({', '.join(ties)})" if ties else ""
        return (
            f"batch {self.batch}: labels {labels}{ties_text}, "
            f"max |d score| = {self.scores_max_abs:.3g} (tol {self.score_atol:g}), "
            f"max |d box| = {self.boxes_max_abs_px:.3g} px = {self.boxes_max_rel:.3g} of the image side "
            f"(tol {self.box_atol_rel:g}) -> {'OK' if self.ok else 'FAIL'}"
        )


def compare_detections(
    ref: Sequence,
    got: Sequence,
    orig_target_sizes,
    *,
    score_atol: float = SCORE_ATOL,
    box_atol_rel: float = BOX_ATOL_REL,
) -> Comparison:
    """Compare two ``(labels, boxes, scores)`` outputs (torch or numpy) of the same batch, image by image.

    1. Position i of ``ref`` matches position i of ``got`` if the labels are equal, the scores within
       ``score_atol`` and the boxes within ``box_atol_rel`` of the image side.
    2. A detection left over is looked for at the other positions whose scores tie with its own (both outputs
       within ``score_atol``): same label and box there is an order swap of tied scores, not an error.
    3. Detections still left over in both outputs whose scores tie with the top-k cut-off (the lowest score) are
       paired one to one: the two top-k may have kept different ones of equally scored candidates. At most
       ``max(2, k / 10)`` per image are accepted this way (beyond that the comparison proves nothing: e.g. a
       model whose scores are all nearly equal); the rest are mismatches.

    The sorted score lists must also agree within ``score_atol`` (a check that no reordering can hide).
    """
    r_labels, r_boxes, r_scores = (np.asarray(t.detach().cpu() if torch.is_tensor(t) else t) for t in ref)
    g_labels, g_boxes, g_scores = (np.asarray(t.detach().cpu() if torch.is_tensor(t) else t) for t in got)
    sizes = np.asarray(orig_target_sizes.cpu() if torch.is_tensor(orig_target_sizes) else orig_target_sizes,
                       dtype=np.float64)
    n = r_scores.shape[0]
    shapes_ok = (
        r_labels.shape == g_labels.shape
        and r_boxes.shape == g_boxes.shape
        and r_scores.shape == g_scores.shape
        and r_labels.dtype == g_labels.dtype
    )
    if not shapes_ok:
        inf = float("inf")
        return Comparison(n, False, r_labels.size, 0, 0, inf, inf, inf, score_atol, box_atol_rel)
    mismatches = swaps = cutoff_ties = 0
    max_score = max_px = max_rel = 0.0
    for b in range(n):
        norm = np.tile(sizes[b], 2)  # (w, h, w, h)
        rs, gs = r_scores[b].astype(np.float64), g_scores[b].astype(np.float64)
        rb, gb = r_boxes[b].astype(np.float64), g_boxes[b].astype(np.float64)
        k = rs.shape[0]
        if k == 0:
            continue
        max_score = max(max_score, float(np.abs(np.sort(rs) - np.sort(gs)).max()))

        def close(i, j):
            return (
                r_labels[b, i] == g_labels[b, j]
                and abs(rs[i] - gs[j]) <= score_atol
                and (np.abs(rb[i] - gb[j]) / norm).max() <= box_atol_rel
            )

        used = np.zeros(k, dtype=bool)
        pairs, left = [], []
        for i in range(k):  # 1. same position
            if close(i, i):
                used[i] = True
                pairs.append((i, i))
            else:
                left.append(i)
        still_left = []
        for i in left:  # 2. order swaps among tied scores
            tied = (~used) & (np.abs(gs - rs[i]) <= score_atol) & (np.abs(rs - rs[i]) <= score_atol)
            partner = next((j for j in np.nonzero(tied)[0] if close(i, j)), None)
            if partner is None:
                still_left.append(i)
            else:
                used[partner] = True
                pairs.append((i, partner))
                swaps += 1
        # 3. replacements at the top-k cut-off, one to one, bounded
        cutoff = min(rs.min(), gs.min())
        got_at_cutoff = [j for j in np.nonzero(~used)[0] if gs[j] - cutoff <= score_atol]
        allowed = max(2, int(np.ceil(0.1 * k)))
        for i in still_left:
            if rs[i] - cutoff <= score_atol and got_at_cutoff and allowed > 0:
                got_at_cutoff.pop()
                allowed -= 1
                cutoff_ties += 1
                continue
            mismatches += 1
            pairs.append((i, i))  # report how far off the same position is
        for i, j in pairs:
            max_score = max(max_score, abs(rs[i] - gs[j]))
            d = np.abs(rb[i] - gb[j])
            max_px = max(max_px, float(d.max()))
            max_rel = max(max_rel, float((d / norm).max()))
    return Comparison(n, True, mismatches, swaps, cutoff_ties, max_score, max_px, max_rel, score_atol, box_atol_rel)


def verify_onnx(
    path,
    deploy_model: RTDETRDeployModel,
    height: int,
    width: int,
    *,
    batches: Sequence[int] = (2, 1),
    seed: int = 1,
    images: Optional[torch.Tensor] = None,
    threads: Optional[int] = None,
    score_atol: float = SCORE_ATOL,
    box_atol_rel: float = BOX_ATOL_REL,
) -> List[Comparison]:
    """Run the ONNX graph and ``deploy_model`` (PyTorch) on the same inputs, one comparison per batch size.

    Args:
        path: the ``.onnx`` file, or a session from :func:`create_session`.
        images: optional ``[M, 3, H, W]`` inputs in [0, 1] (e.g. real photos) used instead of random ones;
            image ``i % M`` fills position i of every batch.
    """
    sess = create_session(path, threads) if isinstance(path, (str, os.PathLike)) else path
    results = []
    for k, batch in enumerate(batches):
        x, sizes = random_inputs(batch, height, width, seed=seed + k)
        if images is not None:
            x = images[torch.arange(batch) % images.shape[0]].to(torch.float32)
        with torch.no_grad():
            ref = deploy_model(x, sizes)
        got = run_onnxruntime(sess, x.numpy(), sizes.numpy())
        results.append(compare_detections(ref, got, sizes, score_atol=score_atol, box_atol_rel=box_atol_rel))
    return results
