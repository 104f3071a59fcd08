"""Deployment: the exportable RT-DETR module (see ``tools/export_onnx.py``)."""

from .deploy_model import RTDETRDeployModel, check_export_size

__all__ = ["RTDETRDeployModel", "check_export_size"]
