"""Expert fusion: merge checkpoint folders by weighted parameter averaging (vt_core.merge), one process.

    python recipes/merge.py --inputs runs/algebra,runs/geometry,runs/calculus --weights 0.5,0.3,0.2 --output runs/fused
    python recipes/merge.py --inputs a,b --output out --dtype bfloat16 --max_shard_gb 2 --overwrite

Weights are non-negative and sum to 1 (uniform when omitted). Inputs must share architecture, tensor names,
shapes and tokenizer. Every option is a field of MergeConfig; --help prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from vt_core.config import format_config, parse_cli
from vt_core.merge import merge_checkpoints


@dataclass
class MergeConfig:
    """Options of the merge recipe."""

    inputs: list[str] = field(default_factory=list)
    """Checkpoint folders to merge (comma separated on the command line)."""
    output: str = ""
    """Folder to write the merged checkpoint to."""
    weights: list[float] | None = None
    """One weight per input, non-negative, summing to 1; None: uniform."""
    dtype: str | None = None
    """Output dtype of floating tensors (e.g. "bfloat16"); None: the inputs' dtype."""
    max_shard_gb: float = 5.0
    """Largest output shard in GiB (bounds the merge's peak memory)."""
    check_tokenizer: bool = True
    """Refuse inputs whose tokenizer files differ (turn off only when the folders lack tokenizer files)."""
    overwrite: bool = False
    """Replace ``output`` when it exists."""


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(MergeConfig(), argv)
    print(format_config(cfg))
    if len(cfg.inputs) < 2 or not cfg.output:
        raise SystemExit("error: give --inputs a,b[,c...] (two or more folders) and --output FOLDER")
    try:
        summary = merge_checkpoints(cfg.inputs, cfg.output, cfg.weights, dtype=cfg.dtype,
                                    max_shard_bytes=int(cfg.max_shard_gb * 1024**3),
                                    check_tokenizer=cfg.check_tokenizer, overwrite=cfg.overwrite)
    except (ValueError, OSError) as e:  # MergeError is a ValueError; missing folders and files are OSErrors
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
