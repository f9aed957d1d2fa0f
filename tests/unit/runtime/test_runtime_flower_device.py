"""flower_device without torch/tensorflow and with fake framework modules."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from typing import Any

import pytest
from runtime_testlib import pythonpath_env

from supernode_runtime import flower_device


def fake_torch(cuda: bool) -> tuple[types.ModuleType, list[float]]:
    calls: list[float] = []
    torch = types.ModuleType("torch")
    torch.device = lambda name: f"device({name})"  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: cuda,
        get_device_name=lambda idx: "Fake A100",
        set_per_process_memory_fraction=calls.append,
    )
    return torch, calls


def fake_tensorflow(gpus: list[str], fail: bool = False) -> tuple[types.ModuleType, list[Any]]:
    calls: list[Any] = []

    def set_memory_growth(gpu: str, flag: bool) -> None:
        if fail:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        calls.append((gpu, flag))

    tf = types.ModuleType("tensorflow")
    tf.config = types.SimpleNamespace(  # type: ignore[attr-defined]
        list_physical_devices=lambda kind: list(gpus) if kind == "GPU" else [],
        experimental=types.SimpleNamespace(set_memory_growth=set_memory_growth),
    )
    return tf, calls


@pytest.fixture
def no_frameworks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "tensorflow", None)


def test_module_imports_only_stdlib() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
        "import supernode_runtime.flower_device as d\n"
        "print(d.describe())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "'framework': 'none'" in proc.stdout


def test_without_frameworks(no_frameworks: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flower_device")
    assert flower_device.get_device() == "cpu"
    assert flower_device.configure_device() == 0
    assert flower_device.apply_memory_fraction(0.5) is None
    assert flower_device.describe() == {"device": "cpu", "framework": "none"}
    assert "PyTorch not installed, using CPU" in caplog.text


def test_torch_with_cuda(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    torch, calls = fake_torch(cuda=True)
    monkeypatch.setitem(sys.modules, "torch", torch)
    caplog.set_level(logging.INFO, logger="flower_device")
    assert flower_device.get_device() == "device(cuda:0)"
    assert "Using GPU: Fake A100" in caplog.text
    monkeypatch.setenv("FL_GPU_MEMORY_FRACTION", "0.35")
    assert flower_device.apply_memory_fraction() == 0.35
    assert flower_device.apply_memory_fraction(0.6) == 0.6
    assert calls == [0.35, 0.6]
    assert "soft limit" in caplog.text
    assert flower_device.describe() == {"device": "cuda:0", "framework": "pytorch"}


def test_torch_fraction_default_when_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    torch, calls = fake_torch(cuda=True)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.delenv("FL_GPU_MEMORY_FRACTION", raising=False)
    assert flower_device.apply_memory_fraction() == 0.8
    assert calls == [0.8]


@pytest.mark.parametrize("bad", ["1.5", "0", "abc"])
def test_torch_invalid_fraction_not_applied(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    torch, calls = fake_torch(cuda=True)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setenv("FL_GPU_MEMORY_FRACTION", bad)
    assert flower_device.apply_memory_fraction() is None
    assert calls == []


def test_torch_without_cuda(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    torch, calls = fake_torch(cuda=False)
    monkeypatch.setitem(sys.modules, "torch", torch)
    caplog.set_level(logging.INFO, logger="flower_device")
    assert flower_device.get_device() == "device(cpu)"
    assert "CUDA not available, using CPU" in caplog.text
    assert flower_device.apply_memory_fraction(0.5) is None
    assert calls == []
    assert flower_device.describe() == {"device": "cpu", "framework": "pytorch"}


def test_tensorflow_memory_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    tf, calls = fake_tensorflow(["GPU:0", "GPU:1"])
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    assert flower_device.configure_device() == 2
    assert calls == [("GPU:0", True), ("GPU:1", True)]
    assert flower_device.describe() == {"device": "cuda:0", "framework": "tensorflow"}


def test_tensorflow_without_gpu_and_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    tf, _ = fake_tensorflow([])
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    assert flower_device.configure_device() == 0
    assert flower_device.describe() == {"device": "cpu", "framework": "tensorflow"}
    tf_fail, _ = fake_tensorflow(["GPU:0"], fail=True)
    monkeypatch.setitem(sys.modules, "tensorflow", tf_fail)
    assert flower_device.configure_device() == 0
