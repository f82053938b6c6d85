"""SFT stage (stage 1, or stage 2 with --data.min_tokens selecting long traces).

    torchrun --nproc_per_node=1 recipes/sft.py                      # embedded default: tiny model, code tasks
    torchrun --nproc_per_node=8 recipes/sft.py --model.path /ckpt/Qwen2.5-Coder-3B --data.path sft.jsonl \
        --data.max_tokens 16384 --optim.lr 1e-5 --run.max_steps 2000 --run.out_dir runs/sft1

Every option is a field of vt_core.trainer.sft.SFTConfig, set as --section.field value; --help prints them.
"""

from vt_core.config import parse_cli
from vt_core.trainer.sft import SFTConfig, run_sft


def main() -> None:
    cfg = parse_cli(SFTConfig())
    run_sft(cfg)


if __name__ == "__main__":
    main()
