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


class _CudaLike:
    """Stands in for a CUDA tensor: resolve_backend only reads .is_cuda and .device."""

    is_cuda = True
    device = torch.device("cuda", 0)


def test_cuda_backend_falls_back_for_ops_without_cuda(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "cuda")
    assert resolve_backend("op", torch.zeros(1)) == "torch"
    assert resolve_backend("op", _CudaLike()) == "triton"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("op", torch.zeros(1), available=("torch", "cuda"))


def test_cuda_backend_uses_the_cpp_twin_on_cpu(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "cuda")
    native_op = ("torch", "cpp", "cuda")
    assert resolve_backend("op", torch.zeros(1), available=native_op) == "cpp"
    assert resolve_backend("op", _CudaLike(), available=native_op) == "cuda"
    assert resolve_backend("op", _CudaLike(), available=native_op + ("triton",)) == "cuda"


def test_auto_prefers_triton_then_cuda_on_cuda_tensors(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "auto")
    assert resolve_backend("op", _CudaLike(), available=("torch", "triton", "cpp", "cuda")) == "triton"
    assert resolve_backend("op", _CudaLike(), available=("torch", "cpp", "cuda")) == "cuda"
    assert resolve_backend("op", _CudaLike(), available=("torch",)) == "torch"
    assert resolve_backend("op", torch.zeros(1), available=("torch", "triton", "cpp", "cuda")) == "torch"
    monkeypatch.setenv("VT_BACKEND", "torch")
    assert resolve_backend("op", _CudaLike(), available=("torch", "cpp", "cuda")) == "torch"


def test_cuda_launch_args_needs_a_cuda_tensor():
    from vt_core.kernels._dispatch import cuda_launch_args

    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda_launch_args(torch.zeros(1))


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "tpu")
    with pytest.raises(ValueError, match="VT_BACKEND"):
        requested_backend()


def test_native_module_imports():
    import vt_core._C as C

    assert isinstance(C.built_with_cuda(), bool)
    assert C.cuda_device_count() >= 0
