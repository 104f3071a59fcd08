"""Fast RT-DETR inference: a deployed copy of the model, in bf16, channels-last, replayed from CUDA graphs.

``FastInference(model)`` keeps the Detectron2 model contract (``list[dict]`` in, ``[{"instances": Instances}]``
out) and adds a tensor API (:meth:`FastInference.detect`). What it does to a *copy* of the model:

* ``convert_to_deploy()``: RepVgg blocks fused, every batch norm folded into its convolution;
* weights cast to ``dtype`` (bf16 by default; the anchors, the reference-box chain and the post-processing stay in
  float32, as in the model's autocast path);
* convolution weights and the input in channels-last layout (the layout Hopper's convolution kernels prefer);
* on CUDA, one CUDA graph per input shape (batch, height, width): the whole network and the top-k selection are
  captured once and replayed, so the per-kernel launch cost disappears (what makes batch-1 latency low). Graphs
  are kept in an LRU of ``max_graphs`` shapes; they share one memory pool.

The copy does not follow later changes of ``model``'s weights: build a new ``FastInference`` after loading other
weights (a build is fast: a deep copy, then one capture per shape at first use).
"""

import collections
import copy
import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.structures import Instances

__all__ = ["FastInference"]

logger = logging.getLogger(__name__)

Detections = Tuple[Tensor, Tensor, Tensor]


class _Graph:
    """A captured network call for one input shape: static input buffer, outputs, the CUDA graph."""

    def __init__(self, fn, example: Tensor, pool, warmup: int):
        self.input = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):  # warm-up off the default stream: lazy inits, autotuning, kernel compiles
            for _ in range(warmup):
                fn(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(self.input)

    def __call__(self, x: Tensor) -> Detections:
        self.input.copy_(x)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)


class FastInference(nn.Module):
    """Deployed, reduced-precision, graph-replayed inference for an :class:`~neo_rtdetr.modeling.RTDETR`.

    Args:
        model: the trained model (left untouched; a deep copy is converted).
        dtype: weight and activation dtype: ``torch.bfloat16`` (default), ``torch.float16`` or ``torch.float32``.
        channels_last: convolution weights and input in channels-last layout.
        cuda_graphs: capture and replay CUDA graphs (CUDA only; ignored on other devices).
        max_graphs: number of input shapes whose graphs are kept.
        warmup: eager runs before each capture; at least 1 with ``cuda_graphs`` (the first run creates the
            per-size constants, which cannot be made from host values inside a capture).
        compile: run the network and the top-k through ``torch.compile`` (static shapes: one compilation per input
            shape, minutes for R50; element-wise operations fused between the convolutions).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dtype: torch.dtype = torch.bfloat16,
        channels_last: bool = True,
        cuda_graphs: bool = True,
        max_graphs: int = 8,
        warmup: int = 3,
        compile: bool = False,
    ):
        super().__init__()
        for attr in ("forward_network", "select_topk", "convert_to_deploy", "preprocess_image"):
            if not hasattr(model, attr):
                raise TypeError(f"FastInference needs an RTDETR model; {type(model).__name__} has no {attr!r}")
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"FastInference: dtype must be bfloat16, float16 or float32, got {dtype}")
        if max_graphs < 1:
            raise ValueError("FastInference: max_graphs must be >= 1")
        if cuda_graphs and warmup < 1:
            raise ValueError(
                f"FastInference: warmup must be >= 1 with cuda_graphs (got {warmup}): the first run creates the "
                "per-size box scale, which cannot be copied from the host inside a graph capture"
            )
        net = copy.deepcopy(model).convert_to_deploy()
        net.requires_grad_(False)
        # pixel_mean/std stay float32 (preprocessing); everything else in `dtype`
        mean, std = net.pixel_mean, net.pixel_std
        net.to(dtype)
        net.pixel_mean, net.pixel_std = mean, std
        self.channels_last = bool(channels_last)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net
        self.dtype = dtype
        self.use_cuda_graphs = bool(cuda_graphs)
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self._graphs: "collections.OrderedDict[tuple, _Graph]" = collections.OrderedDict()
        self._scales: Dict[tuple, Tensor] = {}
        super().train(False)  # inference-only: .training is False from the start
        self._pool = None
        self.compiled = bool(compile)
        self._detect_fn = torch.compile(self._network_core, dynamic=False) if self.compiled else self._network_core

    @property
    def device(self) -> torch.device:
        return self.net.device

    def train(self, mode: bool = True) -> "FastInference":
        if mode:
            raise RuntimeError("FastInference is inference-only")
        return super().train(False)

    # ------------------------------------------------------------------------------------------ network
    def _network(self, x: Tensor) -> Detections:
        """x: [B, 3, H, W] normalised, padded -> (scores [B, k], labels [B, k], boxes [B, k, 4] xyxy pixels of x)."""
        x = x.to(self.dtype, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        scores, labels, boxes = self._detect_fn(x)
        return scores, labels, boxes * self._box_scale(x.shape[-2], x.shape[-1], boxes)

    def _network_core(self, x: Tensor) -> Detections:
        """Network and top-k; boxes normalised xyxy. What ``compile=True`` compiles."""
        out = self.net.forward_network(x)
        return self.net.select_topk(out["pred_logits"], out["pred_boxes"])

    def _box_scale(self, height: int, width: int, like: Tensor) -> Tensor:
        """(W, H, W, H) on the device, made once per size outside graph capture (no host copy inside a graph)."""
        key = (height, width, like.device, like.dtype)
        scale = self._scales.get(key)
        if scale is None:
            scale = torch.tensor([width, height, width, height], dtype=like.dtype, device=like.device)
            self._scales[key] = scale
        return scale

    @torch.no_grad()
    def run_network(self, x: Tensor) -> Detections:
        """The network and top-k on a normalised, padded batch (graph replay on CUDA).

        Args:
            x: [B, 3, H, W] float (normalised as the model expects), H and W multiples of the model's
                ``size_divisibility``, on the model's device.

        Returns:
            scores [B, k] float32, labels [B, k] int64, boxes [B, k, 4] float32 xyxy in pixels of ``x``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FastInference: x must be [B, 3, H, W], got {tuple(x.shape)}")
        if not (self.use_cuda_graphs and x.is_cuda):
            return self._network(x)
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            logger.info("FastInference: capturing a CUDA graph for input %s", tuple(x.shape))
            graph = _Graph(self._network, x, self._pool, self.warmup)
            self._graphs[key] = graph
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return graph(x)

    @torch.no_grad()
    def detect(self, images: Tensor) -> Detections:
        """Tensor API: detections of a batch of equally sized images.

        Args:
            images: [B, 3, H, W] in the model's ``input_format`` and pixel range (e.g. uint8 RGB for the official
                weights), any device; H, W need not be multiples of 32 (the batch is padded).

        Returns:
            scores [B, k], labels [B, k], boxes [B, k, 4] xyxy in pixels of ``images`` (not clipped).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FastInference.detect: images must be [B, 3, H, W], got {tuple(images.shape)}")
        batch = self.net.preprocess_image([{"image": im} for im in images])
        return self.run_network(batch.tensor)

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Detectron2 contract, as ``RTDETR.forward`` in eval mode (``height``/``width`` honoured)."""
        if len(batched_inputs) == 0:
            return []
        images = self.net.preprocess_image(batched_inputs)
        scores, labels, boxes = self.run_network(images.tensor)
        return self.net.detections_to_instances(scores, labels, boxes, batched_inputs, images.image_sizes)
