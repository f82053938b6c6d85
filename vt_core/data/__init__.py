"""vt_core.data: local data sources, tokenization with loss masks, packing by token budget.

    records = iter_records("train.jsonl", fields={"messages": list})        # JSONL / JSON / Parquet / save_to_disk
    tok = load_tokenizer(tiny_tokenizer_path())                             # any local HF tokenizer folder
    examples = list(tokenize_records(tok, records))                         # assistant-only / completion-only masks
    batches = pack_examples(examples, max_tokens=4096)                      # -> list[PackedBatch]

RL: `pack_rl(prompt_ids, completion_ids, max_tokens)` -> micro-batches whose `scatter_tokens` /
`scatter_samples` put sampler logprobs and advantages onto the packed token axis; `pack_rl_shared` packs
each group's prompt once (forward with `attention=shared_prompt_attention(model, mb)`).
"""

from pathlib import Path

from vt_core.assets import tiny_dir

from .chat import (
    TokenizedExample,
    assistant_spans,
    check_token_ids,
    check_vocab,
    load_examples,
    load_tokenizer,
    tokenize_messages,
    tokenize_prompt_completion,
    tokenize_records,
    tokenize_row,
    tokenizer_max_id,
)
from .packing import (
    IGNORE_INDEX,
    PackedBatch,
    RLMicroBatch,
    first_fit_decreasing,
    make_packed_batch,
    pack_examples,
    pack_rl,
)
from .shared_prompts import pack_rl_shared, shared_prompt_attention
from .sources import (
    DataError,
    Record,
    check_fields,
    iter_records,
    read_json_array,
    read_jsonl,
    read_parquet,
    read_rows,
    read_saved_dataset,
)


def tiny_tokenizer_path() -> Path:
    """Folder of the embedded tiny tokenizer (byte-level BPE, ChatML): pass it to `load_tokenizer`."""
    return tiny_dir()


def tiny_model_config_path() -> Path:
    """config.json of the embedded tiny Qwen2ForCausalLM (its folder also holds the matching tokenizer)."""
    return tiny_dir() / "config.json"


__all__ = [
    "DataError",
    "Record",
    "check_fields",
    "iter_records",
    "read_rows",
    "read_jsonl",
    "read_json_array",
    "read_parquet",
    "read_saved_dataset",
    "TokenizedExample",
    "load_tokenizer",
    "assistant_spans",
    "tokenize_messages",
    "tokenize_prompt_completion",
    "tokenize_row",
    "tokenize_records",
    "load_examples",
    "tokenizer_max_id",
    "check_vocab",
    "check_token_ids",
    "IGNORE_INDEX",
    "PackedBatch",
    "RLMicroBatch",
    "first_fit_decreasing",
    "make_packed_batch",
    "pack_examples",
    "pack_rl",
    "pack_rl_shared",
    "shared_prompt_attention",
    "tiny_tokenizer_path",
    "tiny_model_config_path",
]
