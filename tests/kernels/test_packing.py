"""packing_metadata: the C++ CPU twin and the CUDA kernels of vt_core._C against the torch reference."""

import os
import subprocess
import sys

import pytest
import torch

import vt_core._C as C
from vt_core.kernels import packing_metadata, packing_metadata_reference
from vt_core.kernels.packing import packing_metadata_naive

LENGTH_CASES = {
    "single": [7],
    "single_empty": [0],
    "none": [],
    "all_empty": [0, 0, 0],
    "zeros_inside": [3, 0, 0, 5, 1, 0, 2, 0],
    "ones": [1] * 13,
}


def _random_lengths(batch: int, high: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, high, (batch,), generator=gen)
    lengths[torch.rand(batch, generator=gen) < 0.2] = 0  # a fifth of the documents are empty
    return lengths


def _assert_same(got, want):
    for name, g, w in zip(("cu_seqlens", "position_ids", "seq_ids"), got, want):
        assert g.dtype == w.dtype, name
        assert g.device == w.device, name
        assert torch.equal(g, w), name


@pytest.mark.parametrize("case", sorted(LENGTH_CASES))
def test_reference_matches_loop(case):
    lengths = LENGTH_CASES[case]
    cu, pos, seq = packing_metadata_reference(torch.tensor(lengths, dtype=torch.int64))
    assert (cu.tolist(), pos.tolist(), seq.tolist()) == packing_metadata_naive(lengths)
    assert (cu.dtype, pos.dtype, seq.dtype) == (torch.int32, torch.int64, torch.int32)


@pytest.mark.parametrize("case", sorted(LENGTH_CASES) + ["random_257", "random_1"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_cpp_twin_matches_reference(monkeypatch, case, dtype):
    if case == "random_257":
        lengths = _random_lengths(257, 600, seed=1)
    elif case == "random_1":
        lengths = _random_lengths(1, 600, seed=2) + 1
    else:
        lengths = torch.tensor(LENGTH_CASES[case], dtype=torch.int64)
    lengths = lengths.to(dtype)
    want = packing_metadata_reference(lengths)
    monkeypatch.setenv("VT_BACKEND", "cuda")  # CPU tensors + VT_BACKEND=cuda -> the C++ twin
    _assert_same(packing_metadata(lengths), want)
    monkeypatch.setenv("VT_BACKEND", "auto")  # CPU tensors + auto -> the torch reference
    _assert_same(packing_metadata(lengths), want)


def test_cpp_twin_reads_non_contiguous_lengths(monkeypatch):
    lengths = _random_lengths(40, 50, seed=3)[::2]
    monkeypatch.setenv("VT_BACKEND", "cuda")
    _assert_same(packing_metadata(lengths), packing_metadata_reference(lengths))


@pytest.mark.parametrize("backend", ["torch", "cuda"])
@pytest.mark.parametrize(
    "lengths, message",
    [
        (torch.ones(2, 3, dtype=torch.int64), "1-D"),
        (torch.ones(3), "integer"),
        (torch.ones(3, dtype=torch.bool), "integer"),
        (torch.tensor([2, -1, 3]), ">= 0"),
        (torch.tensor([2**30, 2**30], dtype=torch.int64), "2\\^31"),
    ],
)
def test_bad_lengths_are_value_errors(monkeypatch, backend, lengths, message):
    monkeypatch.setenv("VT_BACKEND", backend)
    with pytest.raises(ValueError, match=message):
        packing_metadata(lengths)


def _outputs(batch: int, total: int):
    return (
        torch.empty(batch + 1, dtype=torch.int32),
        torch.empty(total, dtype=torch.int64),
        torch.empty(total, dtype=torch.int32),
    )


def test_cpp_entry_checks_its_inputs():
    """The extension validates on its own, whatever the Python wrapper checked."""
    lengths = torch.tensor([2, -1, 3], dtype=torch.int64)
    cu, pos, seq = _outputs(3, 4)
    ptrs = (cu.data_ptr(), pos.data_ptr(), seq.data_ptr())
    with pytest.raises(ValueError, match=r"lengths\[1\] = -1 is negative"):
        C.packing_metadata_cpu(lengths.data_ptr(), 3, 4, *ptrs)
    lengths = torch.tensor([2, 1, 3], dtype=torch.int64)
    with pytest.raises(ValueError, match="total = 4 but the lengths sum to 6"):
        C.packing_metadata_cpu(lengths.data_ptr(), 3, 4, *ptrs)
    with pytest.raises(ValueError, match="batch must be >= 0"):
        C.packing_metadata_cpu(lengths.data_ptr(), -1, 4, *ptrs)
    with pytest.raises(ValueError, match="position_ids is a null pointer"):
        C.packing_metadata_cpu(lengths.data_ptr(), 3, 6, cu.data_ptr(), 0, seq.data_ptr())
    with pytest.raises(ValueError, match="exceeds int32"):
        big = torch.tensor([2**31 - 1, 1], dtype=torch.int64)
        C.packing_metadata_cpu(big.data_ptr(), 2, 2**31 - 1, cu.data_ptr(), pos.data_ptr(), seq.data_ptr())


def test_cuda_entry_without_gpu_is_a_runtime_error():
    """With no visible device the CUDA entry raises RuntimeError before it touches any pointer."""
    code = (
        "import vt_core._C as C\n"
        "try:\n"
        "    C.packing_metadata_cuda(0, 3, 6, 0, 0, 0, 0, 0)\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError:', e)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("RuntimeError: packing_metadata_cuda:"), proc.stdout
    expected = "no CUDA device" if C.built_with_cuda() else "built without CUDA"
    assert expected in proc.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cuda"])
@pytest.mark.parametrize("case", ["none", "single", "all_empty", "zeros_inside", "random_5000", "random_1"])
def test_cuda_kernel_matches_reference(monkeypatch, backend, case):
    if case == "random_5000":  # more documents than scan threads: several per thread
        lengths = _random_lengths(5000, 300, seed=4)
    elif case == "random_1":
        lengths = _random_lengths(1, 70000, seed=5) + 1
    else:
        lengths = torch.tensor(LENGTH_CASES[case], dtype=torch.int64)
    want = packing_metadata_reference(lengths)
    monkeypatch.setenv("VT_BACKEND", backend)
    side = torch.cuda.Stream()
    lengths_gpu = lengths.cuda()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # runs on torch's current stream, whichever it is
        got = packing_metadata(lengths_gpu)
    torch.cuda.current_stream().wait_stream(side)
    _assert_same(tuple(t.cpu() for t in got), want)
    assert all(t.is_cuda for t in got)
