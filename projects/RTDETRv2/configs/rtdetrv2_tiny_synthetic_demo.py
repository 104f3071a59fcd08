"""The README demo with the RT-DETRv2 decoder: the tiny model trained from scratch on the synthetic shapes (CPU).

Everything but the decoder is ``configs/rtdetr_tiny_synthetic_demo.py``; the stored anchors are those of the demo's
160 x 160 inputs.

    python tools/lazyconfig_train_net.py --config-file projects/RTDETRv2/configs/rtdetrv2_tiny_synthetic_demo.py
"""

from ....configs.rtdetr_tiny_synthetic_demo import dataloader, lr_multiplier, model, optimizer, train
from .models.v2_parts import to_v2

to_v2(model)
model.decoder.eval_spatial_size = [160, 160]
train.output_dir = "./output/rtdetrv2_tiny_synthetic_demo"
