"""``RTDETRDeployModel``: RT-DETR with its pre- and post-processing as one tensor-in / tensor-out module.

This is what ``tools/export_onnx.py`` exports. It follows the official deploy wrapper
(``model.deploy()`` + ``postprocessor.deploy()``):

* inputs: ``images`` ``[N, 3, H, W]`` float32 **RGB in [0, 1]** (an 8-bit image divided by 255, the
  official deploy convention), and ``orig_target_sizes`` ``[N, 2]`` float32 **(w, h)**;
* outputs: ``labels`` int64 ``[N, k]``, ``boxes`` float32 ``[N, k, 4]`` (x0, y0, x1, y1) in the pixels of
  ``orig_target_sizes``, ``scores`` float32 ``[N, k]`` (sigmoid), sorted by score;
  ``k = min(num_top_queries, num_queries * num_classes)``. A query may appear with several classes; there is
  no NMS, no score threshold and no clipping (as in the official deploy output).

The model's own normalisation is applied inside, so any ``pixel_mean`` / ``pixel_std`` / ``input_format`` of
the config is honoured: the channels are reordered to BGR when ``input_format == "BGR"``, then
``x = (images * 255 - pixel_mean) / pixel_std``. For the official weights (mean 0, std 255, RGB) this is the
identity up to float rounding.

``orig_target_sizes`` only scales the normalised boxes. Pass the size of the image the input was *resized*
from (boxes in that image's pixels), or the network input size itself when the frame was *padded* (e.g. a
1920x1080 frame padded to 1920x1088: pass (1920, 1088); the boxes are then in the frame's pixels).
"""

import copy
from typing import Tuple

from torch import Tensor, nn

from neo_rtdetr.modeling.layers.tracing import is_graph_capture

__all__ = ["RTDETRDeployModel", "check_export_size"]


def check_export_size(height: int, width: int, divisor: int = 32) -> None:
    """Raise ``ValueError`` unless both sides are positive multiples of ``divisor``.

    The message suggests the next multiple (e.g. 1080 -> 1088).
    """
    bad = []
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % divisor != 0:
            up = max(divisor, -(-value // divisor) * divisor)
            bad.append(f"{name} {value} -> {up}")
    if bad:
        raise ValueError(
            f"export size {height}x{width} (HxW): both sides must be positive multiples of {divisor} (the largest "
            f"feature stride; the encoder's x2 pyramid needs it). Use the next multiple: {', '.join(bad)} "
            f"(pad or resize the frames to it, e.g. 1920x1080 frames -> --size 1088 1920)."
        )


class RTDETRDeployModel(nn.Module):
    """Deployable RT-DETR: RepVgg blocks fused, pre-processing and top-k post-processing in the graph.

    The forward pass has no data-dependent Python control flow: for a fixed input size (H, W) it traces to a
    single static graph whose only free dimension is the batch size N.

    Args:
        model: an :class:`~neo_rtdetr.modeling.RTDETR` (weights loaded).
        inplace: fuse ``model`` itself (``model.convert_to_deploy()`` is irreversible); by default a deep copy
            is fused and ``model`` is left untouched.

    Forward:
        images: ``[N, 3, H, W]`` float RGB in [0, 1]; H and W multiples of 32.
        orig_target_sizes: ``[N, 2]`` (w, h) to scale the boxes to.

    Returns:
        ``(labels [N, k] int64, boxes [N, k, 4] xyxy pixels, scores [N, k])``.
    """

    def __init__(self, model: nn.Module, *, inplace: bool = False):
        super().__init__()
        for attr in ("forward_network", "select_topk", "convert_to_deploy", "pixel_mean", "pixel_std"):
            if not hasattr(model, attr):
                raise TypeError(f"RTDETRDeployModel needs an RTDETR model; {type(model).__name__} has no {attr!r}")
        if not inplace:
            model = copy.deepcopy(model)
        model.eval()
        model.convert_to_deploy()
        model.requires_grad_(False)
        self.model = model
        self.bgr = model.input_format == "BGR"
        self.size_divisibility = max(32, int(getattr(model, "size_divisibility", 32) or 32))

    @property
    def num_detections(self) -> int:
        """k, the detections per image: ``min(num_top_queries, num_queries * num_classes)``."""
        return min(int(self.model.num_top_queries), int(self.model.decoder.num_queries) * int(self.model.num_classes))

    def forward(self, images: Tensor, orig_target_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if not is_graph_capture():
            # shape checks only (static under export: H and W are fixed, N is the free batch dimension)
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
            if tuple(orig_target_sizes.shape) != (images.shape[0], 2):
                raise ValueError(f"orig_target_sizes must be [N={images.shape[0]}, 2] (w, h), "
                                 f"got {tuple(orig_target_sizes.shape)}")
            check_export_size(int(images.shape[2]), int(images.shape[3]), self.size_divisibility)
        model = self.model
        x = images.to(model.pixel_mean.dtype)
        if self.bgr:
            x = x[:, [2, 1, 0]]
        x = (x * 255.0 - model.pixel_mean) / model.pixel_std
        outputs = model.forward_network(x)
        scores, labels, boxes = model.select_topk(outputs["pred_logits"], outputs["pred_boxes"])
        scale = orig_target_sizes.to(boxes.dtype).repeat(1, 2).unsqueeze(1)  # [N, 1, 4] = (w, h, w, h)
        return labels, boxes * scale, scores
