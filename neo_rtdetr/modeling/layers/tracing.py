"""Graph-capture detection for the modules that cache size-dependent constants.

The AIFI position embedding and the decoder anchors are cached per feature size in eager mode. While a
graph is being captured (``torch.jit.trace`` and the TorchScript ONNX exporter, ``torch.export`` and the
dynamo ONNX exporter), they must be built in the traced graph instead and never stored in the cache:
``torch.export`` runs the model on fake tensors, and a fake tensor left in a cache breaks every later
eager call. The values are computed by the same code either way, so the numerics do not change.
"""

import torch

__all__ = ["is_graph_capture"]


def is_graph_capture() -> bool:
    """True while ``torch.jit.trace`` / ``torch.onnx.export`` (either exporter) / ``torch.export`` trace.

    ``torch.compile`` alone is not included: it keeps the eager caching behaviour.
    """
    if torch.jit.is_tracing():
        return True
    is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())
