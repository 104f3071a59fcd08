"""Training engine: the RT-DETR trainer (AMP, clipping, non-finite skipping) and model EMA."""

from .ema import EMAHook, ModelEMA, ema_weights_for_eval, unwrap_model
from .trainer import RTDETRTrainer

__all__ = ["RTDETRTrainer", "ModelEMA", "EMAHook", "ema_weights_for_eval", "unwrap_model"]
