"""Expert fusion: merge Hugging Face checkpoint folders by weighted parameter averaging, tensor by tensor.

    merge_checkpoints(["runs/algebra", "runs/geometry", "runs/calculus"], "runs/fused", weights=[0.5, 0.3, 0.2])

Every output tensor is ``sum_i w_i * tensor_i`` accumulated in fp32 and written in the inputs' dtype (the
first input's, or ``dtype``). Memory: tensors are read one at a time, each through its own short-lived
``safetensors.safe_open`` (a memory map left open keeps every page read through it resident); one fp32
accumulator and the output shard being filled are the only other buffers, so the peak is about one output
shard (``max_shard_bytes``) plus a few copies of the largest tensor, whatever the number of inputs. Shards
are planned from the file headers before any tensor is read, so their names
(``model-0000i-of-0000n.safetensors``) are final when written.

The merge refuses, with a message naming the checkpoints and the difference, inputs whose architectures
(normalized ``config.json``), tensor names, shapes or tokenizers (vocabulary, merges and added tokens)
differ. The output folder gets the first input's ``config.json`` (``torch_dtype`` updated when ``dtype``
is given), its tokenizer and generation-config files, and is written to ``<output>.partial`` first, then
renamed, so a failed merge leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vt_core.model_config import ModelConfig
from vt_core.model_io import (
    COMPANION_FILES,
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    checkpoint_files,
    names_by_file,
    plan_shards,
    read_config,
    resolve_dtype,
)

# Files that define the token <-> id mapping; chat templates and generation settings may differ freely.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class MergeError(ValueError):
    """Inputs that cannot be merged (different architectures, tensors, shapes or tokenizers; bad weights)."""


@dataclasses.dataclass
class TensorInfo:
    """Where one tensor lives in one checkpoint, and its shape and dtype (read from the file header)."""

    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The merge weights: uniform when None; else ``n`` finite non-negative numbers summing to 1 (1e-6)."""
    if n < 1:
        raise MergeError("merge needs at least one input checkpoint")
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"got {len(weights)} weights for {n} input checkpoints")
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise MergeError(f"merge weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise MergeError(f"merge weights must sum to 1 (within 1e-6), got {weights} (sum {sum(weights)!r})")
    return weights


def architecture(folder: str) -> dict:
    """The architecture of a checkpoint as compared by the merge: the normalized ModelConfig fields
    (so a config written by vt_core and the original transformers one compare equal)."""
    cfg, _ = read_config(folder)
    parsed = ModelConfig.from_hf(cfg, source=os.path.join(folder, "config.json"))
    fields = dataclasses.asdict(parsed)
    for name in ("hf_config", "initializer_range"):
        fields.pop(name)
    return fields


def tokenizer_fingerprint(folder: str) -> dict[str, str]:
    """sha256 per vocabulary-defining tokenizer file present in ``folder`` (``TOKENIZER_FILES``).

    For tokenizer.json only its ``model`` (vocab, merges) and ``added_tokens`` count, canonicalized, so
    formatting or a different saving library version does not make equal tokenizers differ.
    """
    out = {}
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if name == "tokenizer.json":
            tok = json.loads(data)
            data = json.dumps({"model": tok.get("model"), "added_tokens": tok.get("added_tokens")},
                              sort_keys=True).encode()
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def tensor_index(folder: str) -> dict[str, TensorInfo]:
    """Name -> TensorInfo for every tensor of a checkpoint folder, from the safetensors headers only."""
    out: dict[str, TensorInfo] = {}
    for file, names in names_by_file(checkpoint_files(folder)).items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                sl = f.get_slice(name)
                dtype = _ST_DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise MergeError(f"{file}: tensor {name!r} has unsupported dtype {sl.get_dtype()}")
                out[name] = TensorInfo(file, tuple(sl.get_shape()), dtype)
    return out


def _names(items) -> str:
    items = sorted(items)
    return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")


def check_compatible(inputs: Sequence[str], check_tokenizer: bool = True) -> list[dict[str, TensorInfo]]:
    """Raise MergeError unless every input has the first one's architecture, tensor names and shapes
    (and, with ``check_tokenizer``, the same tokenizer files and contents). Returns each input's index."""
    first = inputs[0]
    arch = architecture(first)
    for other in inputs[1:]:
        theirs = architecture(other)
        diff = [f"{k}: {arch[k]!r} vs {theirs[k]!r}" for k in arch if arch[k] != theirs[k]]
        if diff:
            raise MergeError(f"cannot merge {first!r} and {other!r}: different architectures ({'; '.join(diff)})")
    if check_tokenizer:
        tok = tokenizer_fingerprint(first)
        for other in inputs[1:]:
            theirs = tokenizer_fingerprint(other)
            if set(tok) != set(theirs):
                raise MergeError(
                    f"cannot merge {first!r} and {other!r}: different tokenizer files "
                    f"({sorted(tok) or 'none'} vs {sorted(theirs) or 'none'}); copy the tokenizer into both "
                    f"folders, or pass check_tokenizer=False if you know they share one")
            diff = [name for name in tok if tok[name] != theirs[name]]
            if diff:
                raise MergeError(f"cannot merge {first!r} and {other!r}: different tokenizers ({', '.join(diff)} "
                                 f"differ in vocabulary, merges or added tokens)")
    tied = arch["tie_word_embeddings"]
    indexes = []
    for folder in inputs:
        index = tensor_index(folder)
        if tied:
            index.pop("lm_head.weight", None)  # a tied head is the embedding: some writers store it, some do not
        indexes.append(index)
    ref = indexes[0]
    for folder, index in zip(inputs[1:], indexes[1:]):
        missing, extra = set(ref) - set(index), set(index) - set(ref)
        if missing or extra:
            raise MergeError(f"cannot merge {first!r} and {folder!r}: different tensor names (only in the first: "
                             f"{_names(missing) or '-'}; only in the other: {_names(extra) or '-'})")
        shapes = [f"{n} {ref[n].shape} vs {index[n].shape}" for n in ref if ref[n].shape != index[n].shape]
        if shapes:
            raise MergeError(f"cannot merge {first!r} and {folder!r}: different shapes ({_names(shapes)})")
    return indexes


def merge_checkpoints(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    weights: Sequence[float] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    check_tokenizer: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write ``sum_i weights[i] * inputs[i]`` (uniform weights by default) as a checkpoint folder ``output``.

    Floating tensors are averaged in fp32 and cast to ``dtype`` (default: the first input's dtype of each
    tensor); integer / bool tensors must be equal in every input and are copied. Raises MergeError for bad
    weights or incompatible inputs (see :func:`check_compatible`), FileExistsError when ``output`` exists
    and not ``overwrite``. Returns a summary: inputs, weights, tensor count, bytes and weight files written.
    """
    inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
    output = os.path.abspath(os.fspath(output))
    weights = check_weights(weights, len(inputs))
    if max_shard_bytes <= 0:
        raise MergeError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if output in inputs:
        raise MergeError(f"output {output!r} is one of the inputs; write the merge to a new folder")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output {output!r} exists; pass overwrite=True (--overwrite) to replace it")
    out_dtype = None if dtype is None else resolve_dtype(dtype)
    indexes = check_compatible(inputs, check_tokenizer)
    ref = indexes[0]

    def target_dtype(info: TensorInfo) -> torch.dtype:
        return out_dtype if out_dtype is not None and info.dtype.is_floating_point else info.dtype

    sizes = {name: math.prod(info.shape) * target_dtype(info).itemsize for name, info in ref.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    partial = output + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    try:
        for file, names in zip(files, shards):
            shard = {name: _merge_tensor(name, inputs, indexes, weights, target_dtype(ref[name])) for name in names}
            save_file(shard, os.path.join(partial, file), metadata={"format": "pt"})
            del shard
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # then re-raised: no half-written folder stays behind
        raise
    if len(shards) > 1:
        weight_map = {n: file for file, names in zip(files, shards) for n in names}
        with open(os.path.join(partial, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, f, indent=2,
                      sort_keys=True)
    cfg, _ = read_config(inputs[0])
    if out_dtype is not None:
        cfg["torch_dtype"] = str(out_dtype).removeprefix("torch.")
        cfg.pop("dtype", None)
    with open(os.path.join(partial, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in COMPANION_FILES:
        src = os.path.join(inputs[0], name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(partial, name))
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(partial, output)
    return {"output": output, "inputs": inputs, "weights": weights, "tensors": len(ref),
            "bytes": sum(sizes.values()), "files": files}


def _read(index: dict[str, TensorInfo], name: str) -> torch.Tensor:
    # safe_open memory-maps the file and pages read through the map stay resident while it is open: a
    # handle kept open for the whole merge would hold every input in RAM. One open per tensor keeps only
    # the tensor being read (the header is re-parsed each time, which costs little next to the read).
    with safe_open(index[name].file, framework="pt") as f:
        return f.get_tensor(name)


@torch.no_grad()
def _merge_tensor(name, inputs, indexes, weights, dtype) -> torch.Tensor:
    if not indexes[0][name].dtype.is_floating_point:
        first = _read(indexes[0], name)
        for folder, index in zip(inputs[1:], indexes[1:]):
            if not torch.equal(first, _read(index, name)):
                raise MergeError(f"non-floating tensor {name!r} differs between {inputs[0]!r} and {folder!r}")
        return first.contiguous()
    acc = torch.zeros(indexes[0][name].shape, dtype=torch.float32)
    for index, w in zip(indexes, weights):
        if w > 0:  # a zero-weight input is not read: (1, 0) gives the first input bit for bit
            acc.add_(_read(index, name), alpha=w)
    return acc if dtype == torch.float32 else acc.to(dtype)


__all__ = [
    "MergeError",
    "TOKENIZER_FILES",
    "TensorInfo",
    "architecture",
    "check_compatible",
    "check_weights",
    "merge_checkpoints",
    "tensor_index",
    "tokenizer_fingerprint",
]
