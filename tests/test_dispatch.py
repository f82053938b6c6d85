import pytest
import torch

from vt_core.kernels import requested_backend, resolve_backend


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("VT_BACKEND", raising=False)
    assert requested_backend() == "auto"
    assert resolve_backend("op", torch.zeros(1)) == "torch"


def test_explicit_backends(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "torch")
    assert resolve_backend("op", torch.zeros(1)) == "torch"
    monkeypatch.setenv("VT_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("op", torch.zeros(1)) == "triton"
    assert resolve_backend("op", torch.zeros(1), available=("torch",)) == "torch"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("op", torch.zeros(1))


def test_cuda_backend_falls_back_for_ops_without_cuda(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "cuda")
    assert resolve_backend("op", torch.zeros(1)) == "torch"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("op", torch.zeros(1), available=("torch", "cuda"))


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "tpu")
    with pytest.raises(ValueError, match="VT_BACKEND"):
        requested_backend()


def test_native_module_imports():
    import vt_core._C as C

    assert isinstance(C.built_with_cuda(), bool)
    assert C.cuda_device_count() >= 0
