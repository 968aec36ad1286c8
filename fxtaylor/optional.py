"""Optional packages: imported where a feature needs them, with one clear error when missing.

The deployment features (ONNX export, the ONNX Runtime and TensorRT latency runtimes) need
packages the pruning itself does not; they are the ``deploy`` extra
(``pip install 'fxtaylor[deploy]'``), imported only when asked for.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import FxTaylorError

# package → how to install it (the extra that brings it, or the package itself)
INSTALL = {
    "onnx": "pip install 'fxtaylor[deploy]'",
    "onnxruntime": "pip install 'fxtaylor[deploy]'",
    "onnxscript": "pip install 'fxtaylor[deploy]'",
    "torch_tensorrt": "pip install torch-tensorrt (needs CUDA and a TensorRT build matching your torch)",
}


def require(module: str, what: str) -> ModuleType:
    """``import module``, or a :class:`FxTaylorError` saying that ``what`` needs it and how to
    install it (nothing is done before the import fails: callers require first)."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        broken = "" if getattr(e, "name", None) in (top, module, None) else f" (importing it failed: {e})"
        how = INSTALL.get(top, f"pip install {top}")
        raise FxTaylorError(f"{what} needs the {top} package, which is not installed here{broken}: {how}") from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing anything else)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
