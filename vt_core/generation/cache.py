"""Paged KV cache: fixed-size blocks shared by reference count.

Layout per layer: k and v [num_blocks, block_size, Hkv, d] (what ``paged_decode_attention`` and
``write_kv_cache`` take). A sequence owns a list of block ids; the n samples of a prompt share the
prompt's full blocks (refcount n) and each gets its own copy of a partially filled last block.
"""

from __future__ import annotations

import math

import torch


def block_table(block_lists: list[list[int]]) -> torch.Tensor:
    """Host int32 [len(block_lists), longest] of the lists' block ids, short rows padded with block 0 (any
    valid id: entries past a sequence's last block are never read)."""
    width = max(len(b) for b in block_lists)
    return torch.tensor([b + [0] * (width - len(b)) for b in block_lists], dtype=torch.int32)


class BlockAllocator:
    """Free list plus reference counts over ``num_blocks`` block ids."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.refcount = [0] * num_blocks
        self.free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError("KV cache: no free block (the scheduler should have preempted first)")
        block = self.free.pop()
        self.refcount[block] = 1
        return block

    def share(self, block: int) -> None:
        self.refcount[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refcount[block] -= 1
            if self.refcount[block] == 0:
                self.free.append(block)
            elif self.refcount[block] < 0:
                raise RuntimeError(f"KV cache: block {block} released more often than it was taken")


class KVCache:
    """The cache tensors of every layer plus the block allocator."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        if num_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        shape = (num_layers, num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)

    @staticmethod
    def blocks_for_budget(budget_bytes: int, num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                          dtype: torch.dtype) -> int:
        per_block = 2 * num_layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        return budget_bytes // per_block

    @staticmethod
    def blocks_for_tokens(tokens: int, block_size: int) -> int:
        return math.ceil(tokens / block_size)

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_blocks * self.block_size

    def copy_block(self, src: int, dst: int) -> None:
        self.k[:, dst].copy_(self.k[:, src])
        self.v[:, dst].copy_(self.v[:, src])

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """``write_kv_cache`` for one layer when every slot is valid and k, v [N, Hkv, d] have the cache dtype:
        two index copies, without the general op's filtering of skipped slots (the CPU decode path)."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, slots, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, slots, v)

    def slots(self, blocks: list[int], start: int, end: int) -> list[int]:
        """Cache slot of every token position in [start, end) of a sequence holding ``blocks``."""
        bs = self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]
