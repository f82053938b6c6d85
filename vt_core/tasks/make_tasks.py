"""Regenerate the shipped task files (deterministic: the same code gives byte-identical files).

    python -m vt_core.tasks.make_tasks                    # rewrite vt_core/assets/tasks/<domain>_heldout.jsonl
    python -m vt_core.tasks.make_tasks --check            # exit 1 if a shipped file differs from regeneration
    python -m vt_core.tasks.make_tasks --out DIR --train  # write the held-out and train splits to DIR

Only the held-out splits are shipped; the train splits are regenerated from their seeds by
``load_tasks(domain, "train")`` (``--train`` writes them as JSONL for tools that want a file).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vt_core.tasks import DOMAINS, TASKS_DIR, load_tasks, read_task_file, write_task_file


def heldout_rows(domain: str) -> list[dict]:
    """The held-out split of ``domain`` as its generator makes it (not read from the shipped file)."""
    return importlib.import_module(f"vt_core.tasks.{domain}_problems").make_heldout()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TASKS_DIR, help="output folder (default: the shipped one)")
    parser.add_argument("--train", action="store_true", help="also write <domain>_train.jsonl")
    parser.add_argument("--check", action="store_true", help="compare the shipped files with regeneration")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    args = parser.parse_args(argv)
    status = 0
    for domain in args.domains:
        rows = heldout_rows(domain)
        if args.check:
            path = TASKS_DIR / f"{domain}_heldout.jsonl"
            same = path.is_file() and read_task_file(path) == rows
            print(f"{path}: {'matches' if same else 'DIFFERS from'} the generator ({len(rows)} rows)")
            status |= 0 if same else 1
            continue
        size = write_task_file(args.out / f"{domain}_heldout.jsonl", rows)
        print(f"{args.out / f'{domain}_heldout.jsonl'}: {len(rows)} rows, {size} bytes")
        if args.train:
            train = load_tasks(domain, "train")
            size = write_task_file(args.out / f"{domain}_train.jsonl", train)
            print(f"{args.out / f'{domain}_train.jsonl'}: {len(train)} rows, {size} bytes")
    return status


if __name__ == "__main__":
    sys.exit(main())
