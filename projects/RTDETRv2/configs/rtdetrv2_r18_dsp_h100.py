"""RT-DETRv2-S (R18) discrete-sampling fine-tune (official rtdetrv2_r18vd_dsp_3x_coco): the R18 recipe with
``cross_attn_method="discrete"`` (nearest-cell sampling, no ``grid_sample`` in the exported graph; sampling offsets
frozen), 36 epochs, strong augmentations off from epoch 33, started from a trained grid-sample R18.

    python tools/lazyconfig_train_net.py --config-file projects/RTDETRv2/configs/rtdetrv2_r18_dsp_h100.py \
        --num-gpus 8 train.init_checkpoint=rtdetrv2_r18.pth

``rtdetrv2_r18.pth`` is a trained ``rtdetrv2_r18_h100.py`` checkpoint, or official weights converted with
``tools/convert_checkpoint.py`` (see projects/RTDETRv2/README.md).
"""

from .rtdetrv2_r18_h100 import dataloader, lr_multiplier, model, optimizer, train

model.decoder.cross_attn_method = "discrete"
train.output_dir = "./output/rtdetrv2_r18_dsp_h100"
train.epochs = 36
dataloader.train.mapper.stop_strong_augmentation_epoch = 33
