"""david-infer: inference SDK for Microsoft's DAViD human-centric dense-prediction models."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "david_infer" / "__init__.py").read_text()).group(1)

# torch is pinned because this project's machines install a local CPU wheel of exactly this
# version; a bare "torch" would pull the newest CUDA build (several GB).
EXPORT = ["torch==2.13.0", "onnx>=1.17", "onnxscript>=0.5", "safetensors>=0.4"]
GPU = ["onnxruntime-gpu>=1.20", "tensorrt>=10.0", "cuda-python>=12.6.1"]
VIDEO = ["av>=14"]  # PyAV: FFmpeg's libraries in the wheel (decoders, libx264, PNG-in-MOV)
DEV = EXPORT + VIDEO + ["pytest>=8", "hypothesis>=6", "scikit-image>=0.22", "tqdm>=4.60", "plyfile>=1.0"]

setup(
    name="david-infer",
    version=VERSION,
    description="Inference SDK for DAViD: depth, surface normals and foreground from one photo of a person",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["david_infer", "david_infer.*", "export", "export.*"]),
    install_requires=["numpy>=1.23", "Pillow>=9.1", "onnxruntime>=1.17"],
    extras_require={
        "export": EXPORT,
        "gpu": GPU,
        "dev": DEV,
        "video": VIDEO,
        "plot": ["matplotlib>=3.6"],
        "progress": ["tqdm>=4.60"],
    },
    entry_points={"console_scripts": ["david-infer=david_infer.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
