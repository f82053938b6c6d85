"""The readable oracle of ``packing_metadata``: one document at a time, in plain Python."""

from __future__ import annotations


def packing_metadata_naive(lengths: list[int]) -> tuple[list[int], list[int], list[int]]:
    """lengths [B] -> (cu_seqlens [B+1], position_ids [T], seq_ids [T]) as Python lists."""
    cu, pos, seq = [0], [], []
    for b, n in enumerate(lengths):
        cu.append(cu[-1] + n)
        pos.extend(range(n))
        seq.extend([b] * n)
    return cu, pos, seq
