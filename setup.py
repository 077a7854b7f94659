"""david-infer: inference SDK for Microsoft's DAViD human-centric dense-prediction models."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "david_infer" / "__init__.py").read_text()).group(1)

# torch: any 2.x from 2.6 on, so a user's own (CUDA) build is kept. 2.6 is the oldest whose
# torch.onnx.export takes dynamo=True with dynamic_shapes and external_data (david_infer/export/onnx_export.py);
# the torch backend's APIs (autocast on CPU and CUDA, torch.compile, CUDA graphs, antialiased
# interpolate) are older. CI installs torch==2.13.0 (a local CPU wheel) first, so pip keeps it.
EXPORT = ["torch>=2.6,<3", "onnx>=1.17", "onnxscript>=0.5", "safetensors>=0.4"]
# ONNX Runtime comes in builds that write the same `onnxruntime/` folder, so exactly one of the
# `cpu` and `gpu*` extras may be installed (the last one installed would silently win).
CPU = ["onnxruntime>=1.21"]
PLOT = ["matplotlib>=3.6"]
# The server uses MLServer's parts through their public API (tests/project/test_public_apis.py); the
# range is the one CI installs and tests. uvicorn runs its HTTP side (0.29: signals left to us).
# MLServer 1.7.1's inference workers fail with uvloop>=0.22 (SeldonIO/MLServer#2286). `serve` and
# `ray` install together (tests/integration/serving/test_serving.py runs pip check); the server needs a backend too
# (`cpu` or `gpu`).
SERVE = ["mlserver>=1.7.1,<1.8", "uvicorn>=0.29", "uvloop<0.22", "tritonclient[grpc,http]>=2.50"]
TRITON = ["tritonclient[grpc,http]>=2.50"]
RAY = ["ray[data]>=2.40"]
# PyAV: FFmpeg's libraries in the wheel (decoders, libx264, PNG-in-MOV); numba: the stabiliser's per-pixel blend
VIDEO = ["av>=14", "numba>=0.60"]
REFINE = ["scipy>=1.9"]  # refine="people": the mask's connected parts (scipy.ndimage.label)
# One coherent set per CUDA major (README, "GPU install"; checked by benchmarks/gpu_deps.py):
# onnxruntime-gpu's CUDA/cuDNN libraries come from the nvidia-* wheels its [cuda,cudnn] extras
# pull; its TensorRT provider loads libnvinfer.so.10, so TensorRT stays on major 10, built for the
# same CUDA major; cuda-python's major is the CUDA major.
GPU = ["onnxruntime-gpu[cuda,cudnn]~=1.31.1", "tensorrt-cu13>=10.13.2,<11", "cuda-python>=13.0,<14"]
GPU_CU12 = ["onnxruntime-gpu[cuda,cudnn]==1.26.0", "tensorrt-cu12>=10.13,<11", "cuda-python>=12.9,<13"]
# The test suite without an ONNX Runtime build: `test` + `gpu` on a GPU machine, `dev` (+ `cpu`)
# elsewhere. cuda-python runs without a GPU (the driver checks are tested on CPU); either major.
TEST = EXPORT + PLOT + SERVE + RAY + VIDEO + REFINE + ["pytest>=8", "hypothesis>=6", "scikit-image>=0.22", "tqdm>=4.60",
                                     "plyfile>=1.0", "cuda-python>=12.9", "import-linter>=2.0",
                                     "playwright>=1.45", "ruff==0.17.6", "mypy==2.4.1"]  # playwright: drives the system's Chromium (tests/integration/web/test_web.py); ruff: pinned, its format changes between releases; mypy: pinned, its checks change between releases
DEV = TEST + CPU

setup(
    name="david-infer",
    version=VERSION,
    description="Inference SDK for DAViD: depth, surface normals and foreground from one photo of a person",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["david_infer", "david_infer.*"]),
    # The browser page (`david-infer web`), built by `npm ci && npm run build` in web/ (see .ci/run), and
    # the operator table of TensorRT 10's ONNX parser, read by the pre/post graph check.
    package_data={"david_infer": ["web_static/*", "web_static/*/*"],
                  "david_infer.export": ["tensorrt10_ops.json"]},
    install_requires=["numpy>=1.23", "Pillow>=9.1"],
    extras_require={
        "export": EXPORT,
        "cpu": CPU,
        "gpu": GPU,
        "gpu-cu12": GPU_CU12,
        "test": TEST,
        "serve": SERVE,
        "triton": TRITON,
        "ray": RAY,
        "dev": DEV,
        "video": VIDEO,
        "refine": REFINE,
        "plot": PLOT,
        "progress": ["tqdm>=4.60"],
    },
    entry_points={"console_scripts": ["david-infer=david_infer.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
