"""Hugging Face checkpoint folders on disk: read config.json, stream safetensors in, write them back.

A checkpoint folder holds ``config.json`` and either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``{"metadata": {"total_size": ...}, "weight_map": {name: file}}``), the
layout transformers and vLLM read. Nothing here knows the architecture: ``vt_core.model`` builds the
module and uses :func:`assign_tensors` to fill it with the checks that name the offending tensor.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
# Files beside the weights that a saved folder should keep so it opens in transformers / vLLM unchanged.
COMPANION_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def read_config(path: str | os.PathLike) -> tuple[dict, str | None]:
    """Read a model config from a checkpoint folder or a ``.json`` file.

    Returns ``(config_dict, folder)`` where ``folder`` is the checkpoint folder (None for a bare json file).
    Raises FileNotFoundError naming the path when it does not exist or a folder has no config.json.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    if os.path.isdir(path):
        folder, cfg_file = path, os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f"model folder {path!r} has no config.json")
    else:
        folder, cfg_file = None, path
    with open(cfg_file, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg, folder


def checkpoint_files(folder: str) -> dict[str, str]:
    """Map every tensor name in a checkpoint folder to the safetensors file (full path) that holds it."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: missing or empty 'weight_map'")
        files = {name: os.path.join(folder, file) for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{index} lists shard {os.path.basename(file)!r}, which is not in {folder!r}")
        return files
    single = os.path.join(folder, SINGLE_FILE)
    if not os.path.isfile(single):
        raise FileNotFoundError(f"model folder {folder!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def names_by_file(files: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert ``checkpoint_files``: file -> the tensor names it holds (in the mapping's order)."""
    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    return by_file


def iter_tensors(files: Mapping[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one tensor at a time (memory-mapped CPU tensors), file by file."""
    for file, names in names_by_file(files).items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                yield name, f.get_tensor(name)


@torch.no_grad()
def assign_tensors(
    module: torch.nn.Module,
    tensors: Iterator[tuple[str, torch.Tensor]],
    ignore: Mapping[str, str] | None = None,
    source: str = "checkpoint",
) -> None:
    """Copy named tensors into ``module``'s parameters (casting to each parameter's dtype and device).

    Every parameter must be filled exactly once. ``ignore`` maps names that may be present but are not
    parameters (e.g. a tied ``lm_head.weight``) to the reason. Errors name the tensor and both shapes.
    """
    ignore = ignore or {}
    params = dict(module.named_parameters())
    filled: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in tensors:
        if name in ignore or name.endswith("rotary_emb.inv_freq"):
            continue
        param = params.get(name)
        if param is None:
            unexpected.append(f"{name} {tuple(tensor.shape)}")
            continue
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
            )
        param.copy_(tensor)
        filled.add(name)
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors (not in the model): {', '.join(unexpected)}")
    missing = [f"{n} {tuple(p.shape)}" for n, p in params.items() if n not in filled]
    if missing:
        raise ValueError(f"{source}: missing tensors: {', '.join(missing)}")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A torch floating-point dtype from a dtype or its name ("bfloat16", "torch.float16"); None gives float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (e.g. 'bfloat16', 'float32')")
        return resolved
    return dtype


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names (in ``sizes`` order) grouped into shards of at most ``max_shard_bytes`` (a tensor larger than
    that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_checkpoint(
    folder: str | os.PathLike,
    config: Mapping,
    tensors: Mapping[str, torch.Tensor],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    companion_from: str | None = None,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Write ``config.json`` and the tensors as safetensors into ``folder`` (created if needed).

    One ``model.safetensors`` when the total fits in ``max_shard_bytes``, else shards
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``. Floating tensors are cast to
    ``dtype`` when given. Only one shard at a time is copied to the CPU. Weight files from an earlier save in
    the same folder are removed first so no stale shard or index remains. Files in :data:`COMPANION_FILES`
    present in ``companion_from`` and absent from ``folder`` are copied. Returns the weight file names written.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name == INDEX_FILE or (name.startswith("model") and name.endswith(".safetensors")):
            os.remove(os.path.join(folder, name))

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    sizes = {name: t.numel() * out_dtype(t).itemsize for name, t in tensors.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    for file, names in zip(files, shards):
        shard = {n: tensors[n].detach().to(device="cpu", dtype=out_dtype(tensors[n])).contiguous() for n in names}
        save_file(shard, os.path.join(folder, file), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {n: file for file, names in zip(files, shards) for n in names}
        with open(os.path.join(folder, INDEX_FILE), "w", encoding="utf-8") as f:
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            json.dump(index, f, indent=2, sort_keys=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
    if companion_from and os.path.abspath(companion_from) != os.path.abspath(folder):
        for name in COMPANION_FILES:
            src, dst = os.path.join(companion_from, name), os.path.join(folder, name)
            if os.path.isfile(src) and not os.path.exists(dst):
                shutil.copyfile(src, dst)
    return files
