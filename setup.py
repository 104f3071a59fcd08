"""neo_rtdetr: RT-DETR as a Detectron2 project driven by LazyConfig.

torch/torchvision and detectron2 are not declared here on purpose: they are installed (or an
existing installation is kept) by install/setup.sh, because detectron2 has no usable release on
PyPI under its own name and torch builds are machine-specific.
"""

from setuptools import find_packages, setup

setup(
    name="neo_rtdetr",
    version="0.1.0",
    description="RT-DETR real-time detector as a Detectron2 LazyConfig project",
    packages=find_packages(include=("neo_rtdetr", "neo_rtdetr.*")),
    python_requires=">=3.10",
    install_requires=[
        "fvcore",
        "iopath",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "pycocotools>=2.0.2",
        "scipy",
        "opencv-python",
        "numpy",
        "Pillow",
        "tqdm",
    ],
    extras_require={
        # transformers is the numerical oracle of the model tests (built offline, random weights).
        # onnx + onnxruntime: tools/export_onnx.py and its tests (the checker and the ONNX Runtime comparison).
        "test": ["pytest", "transformers>=5.1", "onnx>=1.16", "onnxruntime>=1.18"],
    },
)
