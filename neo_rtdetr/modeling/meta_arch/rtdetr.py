"""RTDETR: the Detectron2 meta-architecture wrapping backbone, hybrid encoder, decoder and criterion."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from neo_rtdetr.modeling.layers.box_ops import box_cxcywh_to_xyxy
from neo_rtdetr.modeling.layers.fuse_conv_bn import fold_batch_norms
from neo_rtdetr.utils.host_to_device import to_device

__all__ = ["RTDETR", "TARGET_BOXES_FIELD"]

#: Field of ``Instances`` holding the training targets' boxes: normalised (cx, cy, w, h) in [0, 1]
#: relative to the augmented image (before padding). Written by the dataset mapper; the model never
#: converts pixel boxes itself.
TARGET_BOXES_FIELD = "gt_boxes_cxcywh"


@META_ARCH_REGISTRY.register()
class RTDETR(nn.Module):
    """RT-DETR (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection") in Detectron2's contract.

    The state dict has exactly the official rtdetr_pytorch layout (``backbone.*``, ``encoder.*``,
    ``decoder.*``): official checkpoints load without renaming. Pixel mean/std are non-persistent
    buffers.

    Args (keyword-only):
        backbone: a Detectron2 ``Backbone`` (e.g. ``PResNet``) returning 3 feature maps.
        encoder: ``HybridEncoder``: list of 3 maps -> list of 3 maps.
        decoder: ``RTDETRTransformer``.
        criterion: ``RTDETRCriterion`` (used in training only).
        num_classes: number of real classes K (sigmoid classification, no background); must equal the
            decoder's and the criterion's (configs tie them with ``${..num_classes}``).
        pixel_mean / pixel_std: per-channel normalisation of the input images, in ``input_format``
            order. The defaults (0 / 255) give the official weights the [0, 1] inputs they expect.
        input_format: channel order of ``batched_inputs[i]["image"]`` ("RGB" for official weights).
        num_top_queries: detections per image at inference (top-k over queries x classes).
        size_divisibility: inputs are zero-padded bottom/right to a multiple of this.
        channels_last: keep the convolution weights and the input batch in channels-last (NHWC) memory layout,
            which the GPU convolution kernels of recent NVIDIA cards prefer (same values, other strides).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (255.0, 255.0, 255.0),
        input_format: str = "RGB",
        num_top_queries: int = 300,
        size_divisibility: int = 32,
        channels_last: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        for name, part in (("decoder", decoder), ("criterion", criterion)):
            if getattr(part, "num_classes", num_classes) != num_classes:
                raise ValueError(f"RTDETR: num_classes={num_classes} but the {name} has num_classes={part.num_classes}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values")
        self.input_format = input_format
        self.num_top_queries = int(num_top_queries)
        self.size_divisibility = int(size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self._nonzero_mean = any(float(v) != 0.0 for v in pixel_mean)  # host-side: no device read per batch
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    # ------------------------------------------------------------------------------------------ inputs
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and batch the images; pad bottom/right to ``size_divisibility``.

        The images are moved to the model's device (asynchronously from the data loader's pinned memory),
        padded and stacked there in their own dtype (e.g. uint8) and normalised in one operation; the padding is 0
        after normalisation. Images so small that the encoder would have fewer tokens than ``num_queries`` (e.g.
        20x20 pixels: 21 tokens at strides 8/16/32) are padded further (see :meth:`_pad_to_min_tokens`).

        Raises:
            ValueError: an image that is not a [3, H, W] tensor, or a floating-point image with NaN
                or inf values (it would silently give NaN scores and boxes); names the batch index.

        Returns:
            ImageList with ``tensor`` [B, 3, H_pad, W_pad] (float32) and ``image_sizes`` (h, w) before padding.
        """
        images = []
        for i, x in enumerate(batched_inputs):
            image = x["image"]
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"batched_inputs[{i}]['image'] must be a [3, H, W] tensor, got {shape}")
            images.append(to_device(image, self.device))  # the loader's pinned images: asynchronous copies
        if len({im.dtype for im in images}) > 1:
            images = [im.to(self.pixel_mean.dtype) for im in images]
        raw = ImageList.from_tensors(images, self.size_divisibility)  # padded on the device, in the input dtype
        if raw.tensor.is_floating_point():  # (zero padding is finite)
            self._check_finite(raw.tensor, batched_inputs)
        x = raw.tensor.to(self.pixel_mean.dtype)
        x = (x - self.pixel_mean) / self.pixel_std
        H, W = x.shape[-2:]
        if self._nonzero_mean and any((h, w) != (H, W) for h, w in raw.image_sizes):
            # zero the padding: valid[b, 0, y, x] = y < h_b and x < w_b
            sizes = to_device(torch.tensor([[int(h), int(w)] for h, w in raw.image_sizes]), x.device)
            rows = torch.arange(H, device=x.device) < sizes[:, :1]  # [B, H]
            cols = torch.arange(W, device=x.device) < sizes[:, 1:]  # [B, W]
            x = x * (rows[:, None, :, None] & cols[:, None, None, :])
        return self._pad_to_min_tokens(ImageList(x, raw.image_sizes))

    @staticmethod
    def _check_finite(batch: Tensor, batched_inputs: List[Dict]) -> None:
        """ValueError naming the first image of ``batch`` [B, 3, H, W] with NaN or inf values: one reduction over
        the batch and one read-back (one device synchronisation per batch, not per image)."""
        finite = torch.isfinite(batch).flatten(1).all(dim=1).tolist()
        for i, ok in enumerate(finite):
            if not ok:
                raise ValueError(
                    f"batched_inputs[{i}]['image'] (image_id={batched_inputs[i].get('image_id')!r}) has NaN or inf "
                    "pixel values; the detections of such an image would be NaN"
                )

    def _pad_to_min_tokens(self, images: ImageList) -> ImageList:
        """Zero-pad (bottom/right) a batch whose encoder memory would hold fewer tokens than the
        decoder's ``num_queries`` (its top-k query selection needs that many), growing the shorter
        side in steps of the largest feature stride. Boxes stay correct: predictions are normalised
        to the padded frame and scaled back with it, and targets are rescaled to it."""
        num_queries = int(getattr(self.decoder, "num_queries", 0))
        shapes = self.backbone.output_shape()
        strides = [shapes[k].stride for k in self._feature_names()]
        H, W = images.tensor.shape[-2:]

        def tokens(h: int, w: int) -> int:
            return sum(math.ceil(h / s) * math.ceil(w / s) for s in strides)

        if tokens(H, W) >= num_queries:
            return images
        step = max([self.size_divisibility, *strides])
        new_h, new_w = H, W
        while tokens(new_h, new_w) < num_queries:
            if new_h <= new_w:
                new_h += step
            else:
                new_w += step
        tensor = F.pad(images.tensor, (0, new_w - W, 0, new_h - H))
        return ImageList(tensor, images.image_sizes)

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, Tensor]]:
        """Criterion targets: per image ``labels`` [n] and ``boxes`` [n, 4] normalised cxcywh, on the model's device.

        The mapper's boxes are normalised by the image size before padding; they are rescaled to the
        padded frame the network sees (a no-op when no padding was needed). The targets are validated where the
        data loader put them (the host, normally: no device synchronisation) and moved to the device in one
        transfer per field.
        """
        H, W = images.tensor.shape[-2:]
        labels, boxes = [], []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(f"training needs batched_inputs[{i}]['instances'] (use RTDETRDatasetMapper)")
            inst = x["instances"]
            if not inst.has(TARGET_BOXES_FIELD):
                raise ValueError(
                    f"batched_inputs[{i}]['instances'] has no '{TARGET_BOXES_FIELD}' (normalised cxcywh boxes); "
                    "RT-DETR does not train on pixel boxes: build the data with RTDETRDatasetMapper"
                )
            h, w = images.image_sizes[i]
            b = inst.get(TARGET_BOXES_FIELD).to(torch.float32)
            labels.append(inst.gt_classes)
            boxes.append(b * b.new_tensor([w / W, h / H, w / W, h / H]))
        host_targets = [{"labels": lab, "boxes": box} for lab, box in zip(labels, boxes)]
        self.criterion.check_targets(host_targets, len(host_targets))
        sizes = [int(lab.shape[0]) for lab in labels]
        all_labels = to_device(torch.cat([lab.reshape(-1) for lab in labels]), self.device, torch.int64)
        all_boxes = to_device(torch.cat([box.reshape(-1, 4) for box in boxes]), self.device)
        return [
            {"labels": lab, "boxes": box}
            for lab, box in zip(all_labels.split(sizes), all_boxes.split(sizes))
        ]

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]):
        """Detectron2 model contract.

        Args:
            batched_inputs: list of dicts with ``image`` ([3, H, W] tensor in ``input_format``), in training
                ``instances`` (``gt_classes`` and ``gt_boxes_cxcywh``), in inference optionally ``height`` /
                ``width`` (the output resolution; default: the input's).

        Returns:
            training: dict of weighted scalar losses (``loss_*``); inference: list of
            ``{"instances": Instances(pred_boxes (XYXY abs), scores, pred_classes)}``.
        """
        if not self.training and len(batched_inputs) == 0:
            return []
        images = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images) if self.training else None
        outputs = self.forward_network(images.tensor, targets)
        if self.training:
            return self.criterion(outputs, targets, check_targets=False)  # validated in prepare_targets
        return self._postprocess(outputs, batched_inputs, images)

    def forward_network(self, x: Tensor, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        """Backbone -> encoder -> decoder on a normalised, padded batch.

        Args:
            x: [B, 3, H, W], H and W multiples of 32.
            targets: training targets (see :meth:`prepare_targets`), needed for denoising.

        Returns:
            the decoder's output dict (``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4], ...).
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        feats = [features[k] for k in self._feature_names()]
        return self.decoder(self.encoder(feats), targets)

    def _feature_names(self) -> List[str]:
        shapes = self.backbone.output_shape()
        return sorted(shapes, key=lambda k: shapes[k].stride)

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def select_topk(self, pred_logits: Tensor, pred_boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Top-k over queries x classes (a query may appear with several classes; no NMS).

        Args:
            pred_logits: [B, Q, K]; pred_boxes: [B, Q, 4] normalised cxcywh.

        Returns:
            scores [B, k], labels [B, k], boxes [B, k, 4] normalised xyxy, k = min(num_top_queries, Q*K).
        """
        B, Q, K = pred_logits.shape
        scores = pred_logits.float().sigmoid().flatten(1)
        k = min(self.num_top_queries, Q * K)
        scores, index = torch.topk(scores, k, dim=1)
        labels = index % K
        query = index // K
        boxes = box_cxcywh_to_xyxy(pred_boxes.float()).gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        return scores, labels, boxes

    def _postprocess(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        scores, labels, boxes = self.select_topk(outputs["pred_logits"], outputs["pred_boxes"])
        H, W = images.tensor.shape[-2:]
        boxes = boxes * boxes.new_tensor([W, H, W, H])  # pixels of the (padded) network input
        return self.detections_to_instances(scores, labels, boxes, batched_inputs, images.image_sizes)

    @staticmethod
    def detections_to_instances(
        scores: Tensor, labels: Tensor, boxes: Tensor, batched_inputs: List[Dict], image_sizes: List[Tuple[int, int]]
    ) -> List[Dict[str, Instances]]:
        """Per-image ``Instances`` in the requested output resolution.

        The same result as Detectron2's ``detector_postprocess`` per image (boxes scaled to the output size,
        clipped to it, empty boxes dropped), computed for the whole batch at once with one host transfer (the
        per-image version synchronises once per image and field).

        Args:
            scores: [B, k]; labels: [B, k]; boxes: [B, k, 4] xyxy in pixels of the padded network input.
            batched_inputs: the inputs (optional ``height`` / ``width``: the output resolution).
            image_sizes: (h, w) of each image before padding.
        """
        out_sizes = [(x.get("height", h), x.get("width", w)) for x, (h, w) in zip(batched_inputs, image_sizes)]
        if any(isinstance(v, Tensor) for size in out_sizes for v in size):  # traced sizes: Detectron2's own path
            results = []
            for i, ((h, w), (oh, ow)) in enumerate(zip(image_sizes, out_sizes)):
                inst = Instances((h, w), pred_boxes=Boxes(boxes[i]), scores=scores[i], pred_classes=labels[i])
                results.append({"instances": detector_postprocess(inst, oh, ow)})
            return results
        scale = [[ow / w, oh / h, ow / w, oh / h] for (h, w), (oh, ow) in zip(image_sizes, out_sizes)]
        bound = [[ow, oh, ow, oh] for oh, ow in out_sizes]
        host = to_device(torch.tensor([scale, bound], dtype=boxes.dtype), boxes.device)
        boxes = torch.minimum((boxes * host[0][:, None, :]).clamp(min=0), host[1][:, None, :])
        keep = ((boxes[..., 2] - boxes[..., 0]) > 0) & ((boxes[..., 3] - boxes[..., 1]) > 0)  # Boxes.nonempty()
        keep_host = keep.cpu()
        results = []
        for i, size in enumerate(out_sizes):
            fields = {"pred_boxes": boxes[i], "scores": scores[i], "pred_classes": labels[i]}
            if not bool(keep_host[i].all()):
                index = keep_host[i].nonzero().squeeze(1).to(boxes.device)
                fields = {k: v[index] for k, v in fields.items()}
            fields["pred_boxes"] = Boxes(fields["pred_boxes"])
            results.append({"instances": Instances(size, **fields)})
        return results

    # ------------------------------------------------------------------------------------ deployment
    def convert_to_deploy(self) -> "RTDETR":
        """Inference-only rewrite (irreversible): fuse the RepVgg blocks and fold every batch norm into its
        convolution. The outputs are unchanged up to float rounding; the state dict loses the BN entries. Puts the
        model in eval mode. Returns self."""
        self.eval()
        self.encoder.convert_to_deploy()
        fold_batch_norms(self)
        return self
