"""Device helper for ClientApps inside the SuperNode container.

Standalone module (standard library only at import time): copy it into the
image or the app. PyTorch and TensorFlow are imported lazily inside the
functions, so it works when neither is installed (the ClientApp then trains
on CPU)::

    from flower_device import get_device, apply_memory_fraction
    device = get_device()           # torch.device("cuda:0") or torch.device("cpu")
    apply_memory_fraction()         # FL_GPU_MEMORY_FRACTION, soft limit
    model = model.to(device)

Environment set by the appliance: ``FL_GPU_MEMORY_FRACTION`` (default 0.8),
``TF_FORCE_GPU_ALLOW_GROWTH=true`` and, with a GPU, ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

LOG = logging.getLogger("flower_device")
MEMORY_FRACTION_ENV = "FL_GPU_MEMORY_FRACTION"
DEFAULT_MEMORY_FRACTION = 0.8


def _optional_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _torch_cuda(torch: ModuleType) -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop CPU training
        LOG.exception("torch.cuda.is_available() failed; assuming no GPU")
        return False


def get_device() -> Any:
    """Best PyTorch device with CPU fallback: ``cuda:0`` if CUDA is available.

    Returns a ``torch.device`` when PyTorch is installed, else the string ``"cpu"``.
    """
    torch = _optional_import("torch")
    if torch is None:
        LOG.info("PyTorch not installed, using CPU")
        return "cpu"
    if _torch_cuda(torch):
        device = torch.device("cuda:0")
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:
            name = "unknown GPU"
        LOG.info("Using GPU: %s", name)
        return device
    LOG.info("CUDA not available, using CPU")
    return torch.device("cpu")


def configure_device() -> int:
    """TensorFlow: enable memory growth on every GPU.

    By default TensorFlow maps nearly all GPU memory at start-up; with memory growth it
    allocates as needed, so a second process on the GPU is not starved
    (https://www.tensorflow.org/guide/gpu#limiting_gpu_memory_growth).

    Returns the number of GPUs configured; 0 when TensorFlow is missing or no
    GPU is visible (training then runs on CPU).
    """
    tf = _optional_import("tensorflow")
    if tf is None:
        LOG.info("TensorFlow not installed, nothing to configure")
        return 0
    gpus = list(tf.config.list_physical_devices("GPU"))
    if not gpus:
        LOG.info("No GPU available, using CPU")
        return 0
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:  # raised when GPUs were already initialised
        LOG.warning("GPU configuration error: %s", exc)
        return 0
    LOG.info("Using %d GPU(s) with memory growth", len(gpus))
    return len(gpus)


def _fraction_from_env() -> float | None:
    raw = os.environ.get(MEMORY_FRACTION_ENV, "").strip()
    if not raw:
        return DEFAULT_MEMORY_FRACTION
    try:
        value = float(raw)
    except ValueError:
        LOG.warning("%s=%r is not a number; not limiting GPU memory", MEMORY_FRACTION_ENV, raw)
        return None
    return value


def apply_memory_fraction(fraction: float | None = None) -> float | None:
    """Cap PyTorch's CUDA caching allocator at ``fraction`` of GPU memory.

    ``fraction`` defaults to ``FL_GPU_MEMORY_FRACTION`` (then 0.8). This is a
    SOFT limit: it only bounds PyTorch's caching allocator
    (https://pytorch.org/docs/stable/generated/torch.cuda.set_per_process_memory_fraction.html);
    the CUDA context, cuDNN workspaces and other processes are not counted, so
    real usage can exceed it. Use MIG or separate GPUs for real isolation.
    Returns the fraction applied, or None when nothing was applied (no
    PyTorch, no CUDA, or an invalid value outside (0, 1]).
    """
    value = _fraction_from_env() if fraction is None else fraction
    if value is None:
        return None
    if not 0.0 < value <= 1.0:
        LOG.warning("GPU memory fraction %r is outside (0, 1]; not applied", value)
        return None
    torch = _optional_import("torch")
    if torch is None or not _torch_cuda(torch):
        LOG.info("No CUDA device; GPU memory fraction not applied")
        return None
    torch.cuda.set_per_process_memory_fraction(value)
    LOG.info("PyTorch GPU memory fraction set to %s (soft limit)", value)
    return value


def describe() -> dict[str, str]:
    """``{"device": "cpu"|"cuda:0", "framework": "pytorch"|"tensorflow"|"none"}``."""
    torch = _optional_import("torch")
    if torch is not None:
        return {"device": "cuda:0" if _torch_cuda(torch) else "cpu", "framework": "pytorch"}
    tf = _optional_import("tensorflow")
    if tf is not None:
        try:
            has_gpu = bool(tf.config.list_physical_devices("GPU"))
        except Exception:
            has_gpu = False
        return {"device": "cuda:0" if has_gpu else "cpu", "framework": "tensorflow"}
    return {"device": "cpu", "framework": "none"}
