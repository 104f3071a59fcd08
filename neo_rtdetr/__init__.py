"""neo_rtdetr: RT-DETR (real-time DETR) as a Detectron2 project driven by LazyConfig.

Importing the package has no side effects: datasets are registered and models are registered in
detectron2's META_ARCH_REGISTRY only when their modules are imported or their functions called.
"""

__version__ = "0.1.0"
