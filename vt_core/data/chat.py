"""Tokenization with loss masks: chat rows (assistant-only loss) and prompt/completion rows (completion-only).

The assistant mask does not rely on `{% generation %}` tags in the chat template (most templates, ChatML
and Qwen2.5's included, have none). It renders the conversation, then for each assistant turn renders the
turns before it with the generation prompt (where the reply starts) and the turns up to it (where the reply
ends), checks both are prefixes of the full text, and keeps the character span in between minus the trailing
whitespace separator. Tokens are marked from the tokenizer's character offsets, so BPE merges across a
boundary cannot shift the mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sources import Record, iter_records


@dataclass
class TokenizedExample:
    """A tokenized document: `loss_mask[i]` is True where token i is one the model is trained to produce."""

    input_ids: list[int]
    loss_mask: list[bool]
    source: str | None = None
    row: int | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def where(self) -> str:
        """'file, row N' when the example came from a data source, else ''."""
        return "" if self.source is None else f"{self.source}, row {self.row}"


def load_tokenizer(path: str | Path):
    """A Hugging Face tokenizer from a local folder (never downloads)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{path} holds no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _fail(record: Record | None, field: str | None, problem: str) -> ValueError:
    if record is not None:
        return record.error(field, problem)
    return ValueError(problem if field is None else f"field {field!r}: {problem}")


def _check_messages(messages: Any, field: str, record: Record | None) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _fail(record, field, f"expected a non-empty list of {{role, content}} messages, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _fail(record, f"{field}[{i}]", f"expected a {{role, content}} object, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise _fail(record, f"{field}[{i}].{key}", "missing field")
            if not isinstance(m[key], str):
                raise _fail(record, f"{field}[{i}].{key}", f"expected str, got {type(m[key]).__name__}")
    return messages


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], first: int = 0, roles: Sequence[str] = ("assistant",)):
    """Render `messages`; return (text, [(start, end) character spans of the turns to train on]).

    Trained turns are those with index >= first whose role is in `roles`. Each span starts where the
    template's generation prompt ends and stops after the turn's end-of-turn text, without trailing whitespace.
    """
    text = _render(tokenizer, messages, False)
    spans = []
    for i in range(first, len(messages)):
        if messages[i]["role"] not in roles:
            continue
        before = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(before) and text.startswith(upto) and len(before) <= len(upto)):
            raise ValueError(
                f"the chat template renders turn {i} differently depending on the later turns, so its span cannot "
                "be located by prefix rendering; use a template whose earlier turns do not change"
            )
        end = len(before) + len(upto[len(before):].rstrip())
        spans.append((len(before), end))
    return text, spans


def _mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    mask = []
    for s, e in offsets:
        if s == e:
            mask.append(any(a <= s < b for a, b in spans))
        else:
            mask.append(any(s < b and e > a for a, b in spans))
    return mask


def tokenize_messages(tokenizer, messages: list[dict], *, first: int = 0, record: Record | None = None,
                      field: str = "messages") -> TokenizedExample:
    """Chat rows: the chat template's tokens, with the loss on assistant turns (index >= first) only."""
    _check_messages(messages, field, record)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("assistant-only masks need a fast tokenizer (character offsets); load one with tokenizer.json")
    try:
        text, spans = assistant_spans(tokenizer, messages, first)
    except ValueError as e:
        raise _fail(record, field, str(e)) from None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = _mask_from_offsets(enc["offset_mapping"], spans)
    return TokenizedExample(list(enc["input_ids"]), mask, *_loc(record))


def _loc(record: Record | None) -> tuple[str | None, int | None]:
    return (None, None) if record is None else (record.source, record.row)


def tokenize_prompt_completion(tokenizer, prompt: str | list[dict], completion: str | list[dict], *,
                               add_eos: bool = True, record: Record | None = None,
                               fields: tuple[str, str] = ("prompt", "completion")) -> TokenizedExample:
    """Prompt/completion rows, loss on the completion only.

    Strings: the prompt is encoded with the tokenizer's special tokens (a BOS where it has one), the
    completion without, and the EOS token is appended to the completion when `add_eos` and missing.
    Lists of messages (conversational form): rendered with the chat template, loss on the completion's
    assistant turns.
    """
    if isinstance(prompt, list) and isinstance(completion, list):
        _check_messages(prompt, fields[0], record)
        _check_messages(completion, fields[1], record)
        return tokenize_messages(tokenizer, prompt + completion, first=len(prompt), record=record, field=fields[1])
    for name, value in zip(fields, (prompt, completion)):
        if not isinstance(value, str):
            raise _fail(record, name, f"expected str (or both prompt and completion as message lists), "
                                      f"got {type(value).__name__}")
    p_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not c_ids or c_ids[-1] != eos):
        c_ids.append(eos)
    return TokenizedExample(p_ids + c_ids, [False] * len(p_ids) + [True] * len(c_ids), *_loc(record))


def tokenize_row(tokenizer, row: Record | dict, *, messages_field: str = "messages", prompt_field: str = "prompt",
                 completion_field: str = "completion", add_eos: bool = True) -> TokenizedExample:
    """Tokenize one row: chat form (`messages_field`) or prompt/completion form, chosen by the fields present."""
    record = row if isinstance(row, Record) else None
    data = row.data if isinstance(row, Record) else row
    if messages_field in data:
        return tokenize_messages(tokenizer, data[messages_field], record=record, field=messages_field)
    if prompt_field in data or completion_field in data:
        for name in (prompt_field, completion_field):
            if name not in data:
                raise _fail(record, name, "missing field")
        return tokenize_prompt_completion(tokenizer, data[prompt_field], data[completion_field], add_eos=add_eos,
                                          record=record, fields=(prompt_field, completion_field))
    present = ", ".join(sorted(data)) or "none"
    raise _fail(record, messages_field,
                f"missing field: a row needs {messages_field!r} or {prompt_field!r} + {completion_field!r} "
                f"(fields present: {present})")


def tokenize_records(tokenizer, records: Iterable[Record | dict], **kwargs) -> Iterator[TokenizedExample]:
    """`tokenize_row` over records (keyword arguments as in tokenize_row)."""
    for record in records:
        yield tokenize_row(tokenizer, record, **kwargs)


def load_examples(path: str | Path, tokenizer, *, split: str | None = None, **kwargs) -> list[TokenizedExample]:
    """Read a local source (see `iter_records`) and tokenize every row (keyword arguments as in tokenize_row)."""
    return list(tokenize_records(tokenizer, iter_records(path, split=split), **kwargs))


def tokenizer_max_id(tokenizer) -> int:
    """The largest token id the tokenizer can emit (added tokens included)."""
    return max(len(tokenizer) - 1, max(tokenizer.get_vocab().values()))


def check_vocab(tokenizer, vocab_size: int, *, model: str = "the model") -> None:
    """Raise ValueError if the tokenizer can emit an id >= vocab_size (the embedding would be indexed out of range)."""
    top = tokenizer_max_id(tokenizer)
    if top >= vocab_size:
        raise ValueError(
            f"tokenizer/model vocab mismatch: the tokenizer emits token ids up to {top}, but {model} has "
            f"vocab_size={vocab_size} (ids must be < vocab_size). Use the tokenizer saved with the model, or "
            f"resize the model's embeddings to at least {top + 1} rows."
        )


def check_token_ids(input_ids, vocab_size: int, *, where: str = "") -> None:
    """Raise ValueError naming the first token id outside [0, vocab_size) in a list or tensor of ids."""
    import torch

    ids = torch.as_tensor(input_ids).reshape(-1)
    bad = ((ids < 0) | (ids >= vocab_size)).nonzero()
    if bad.numel():
        pos = int(bad[0])
        loc = f" in {where}" if where else ""
        raise ValueError(
            f"token id {int(ids[pos])} at position {pos}{loc} is outside the model's vocabulary "
            f"(vocab_size={vocab_size}): the tokenizer and the model do not match"
        )

