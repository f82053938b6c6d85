"""Generate the embedded default tokenizer and tiny model config in vt_core/assets/tiny/.

    python -m vt_core.assets.make_tiny            # rewrite vt_core/assets/tiny/
    python -m vt_core.assets.make_tiny --out DIR  # write elsewhere

Deterministic: the corpus comes from a seeded generator (small Python programs and functions, arithmetic,
English statements of programming problems, chat-style wrappers: the text of the code-RL default) and the
byte-level BPE is trained on it with the `tokenizers` library, so running it twice gives identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SEED = 20240601
NUM_DOCS = 3000
VOCAB_SIZE = 1000  # including the special tokens; the model rounds it up to a multiple of 64
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Pre-tokenization and normalization are exactly those transformers' Qwen2Tokenizer installs (it rebuilds the
# pipeline from vocab and merges when a folder's config.json says qwen2), so the tokenizer encodes the same
# whichever class loads it: apostrophe suffixes, words with one optional leading non-letter, single digits
# (numbers are spelled digit by digit, which suits arithmetic), punctuation runs with trailing newlines,
# newline runs, and whitespace runs that leave their last space to the next word.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

NAMES = ["f", "g", "h", "solve", "compute", "answer", "transform", "score", "count_items", "total", "apply_rule"]
VARS = ["x", "y", "n", "a", "b", "k", "i", "j", "s", "t", "m", "value", "result", "count", "total", "nums", "line"]
UNARY = [
    "x + {c}", "x - {c}", "x * {c}", "x * {c} + {d}", "x * x + {c}", "x // {c}", "x % {c}", "abs(x - {c})",
    "max(x, {c})", "min(x, {c})", "(x + {c}) * (x - {d})", "x ** 2 - {c}", "{c} - x", "x * (x + {c})",
    "(x + {c}) // {d}", "x * {c} - x // {d}",
]
TASKS = [
    ("reads an integer n and prints the sum of the integers from 1 to n", "print(n * (n + 1) // 2)"),
    ("reads an integer n and prints n squared", "print(n * n)"),
    ("reads an integer n and prints whether it is even or odd", 'print("even" if n % 2 == 0 else "odd")'),
    ("reads an integer n and prints its number of digits", "print(len(str(abs(n))))"),
    ("reads an integer n and prints the factorial of n", "r = 1\nfor i in range(2, n + 1):\n    r *= i\nprint(r)"),
    ("reads an integer n and prints the n-th Fibonacci number",
     "a, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)"),
    ("reads an integer n and prints the sum of its digits", "print(sum(int(c) for c in str(abs(n))))"),
    ("reads an integer n and prints YES if it is prime and NO otherwise",
     'ok = n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\nprint("YES" if ok else "NO")'),
]
LIST_TASKS = [
    ("prints the largest number in the list", "print(max(nums))"),
    ("prints the smallest number in the list", "print(min(nums))"),
    ("prints the sum of the list", "print(sum(nums))"),
    ("prints the list sorted in increasing order", 'print(" ".join(map(str, sorted(nums))))'),
    ("prints the list in reverse order", 'print(" ".join(map(str, nums[::-1])))'),
    ("prints how many numbers are even", "print(sum(1 for v in nums if v % 2 == 0))"),
    ("prints the number of distinct values", "print(len(set(nums)))"),
    ("prints the difference between the largest and the smallest value", "print(max(nums) - min(nums))"),
]
STRING_TASKS = [
    ("prints the string reversed", "print(s[::-1])"),
    ("prints the string in upper case", "print(s.upper())"),
    ("prints the number of vowels in the string", 'print(sum(ch in "aeiou" for ch in s))'),
    ("prints YES if the string is a palindrome and NO otherwise", 'print("YES" if s == s[::-1] else "NO")'),
    ("prints the number of words in the line", "print(len(s.split()))"),
    ("prints the most common character", "print(max(sorted(set(s)), key=s.count))"),
]
PHRASES = [
    "Write a Python program that {task}.",
    "Write a program that {task}. Read the input from standard input and print the answer.",
    "Your task: write code that {task}.",
    "Solve the following problem in Python. The program {task}.",
]
ENGLISH = [
    "The input contains a single line.", "Print the answer on one line.", "Return the result as an integer.",
    "Each test case is independent.", "The first line contains the number of test cases.",
    "You may assume the input is valid.", "Think step by step, then give the final code in a code block.",
    "Here is my solution.", "Let me check the examples first.", "This passes all the examples.",
    "The function should not print anything.", "Use integer division where needed.",
    "Note that the answer can be negative.", "Find the expression that matches every example below.",
]


SNIPPETS = [
    "import sys\n\n\ndef main():\n    data = sys.stdin.read().split()\n    t = int(data[0])\n"
    "    for idx in range(1, t + 1):\n"
    "        print(int(data[idx]) * {c})\n\n\nmain()",
    "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        seen = {{}}\n"
    "        for i, v in enumerate(nums):\n            if target - v in seen:\n"
    "                return [seen[target - v], i]\n"
    "            seen[v] = i\n        return []",
    "def {name}(n: int) -> list:\n    digits = []\n    while n > 0:\n        digits.append(n % 10)\n        n //= 10\n"
    "    return digits[::-1]",
    "# count how often each character occurs\ncounts = {{}}\nfor ch in s:\n    counts[ch] = counts.get(ch, 0) + 1\n"
    "best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))\nprint(best[0][0])",
    "squares = [v * v for v in nums if v > {c}]\nprint(len(squares), sum(squares))",
    "def is_valid(s: str) -> bool:\n    stack = []\n    pairs = {{')': '(', ']': '['}}\n    for ch in s:\n"
    "        if ch in pairs:\n            if not stack or stack.pop() != pairs[ch]:\n                return False\n"
    "        else:\n            stack.append(ch)\n    return not stack",
    "n, m = map(int, input().split())\ngrid = [input() for _ in range(n)]\nprint(sum(row.count('#') for row in grid))",
    "try:\n    value = int(line)\nexcept ValueError:\n    value = None\nif value is not None and value >= {c}:\n"
    "    print(f\"{{value}} is large\")",
    "from collections import Counter, defaultdict, deque\n\ngraph = defaultdict(list)\nfor a, b in edges:\n"
    "    graph[a].append(b)\n    graph[b].append(a)\nseen = {{0}}\nqueue = deque([0])\nwhile queue:\n"
    "    node = queue.popleft()\n    for nxt in graph[node]:\n        if nxt not in seen:\n"
    "            seen.add(nxt)\n            queue.append(nxt)\nprint(len(seen))",
    "def {name}(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n\n\n"
    "assert {name}({c}, {d}) == {name}({d}, {c})",
    "total = 0\nfor a, b in zip(xs, ys):\n    total += abs(a - b)\nprint(total)",
    "memo = {{}}\n\n\ndef ways(k):\n    if k <= 1:\n        return 1\n    if k not in memo:\n"
    "        memo[k] = ways(k - 1) + ways(k - 2)\n    return memo[k]\n\n\nprint(ways({c}) % 1000000007)",
]
STATEMENTS = [
    "Given an array of n integers, find the maximum sum of a contiguous subarray.",
    "Given a string s, return the length of the longest substring without repeating characters.",
    "You are given a grid with n rows and m columns. Count the cells that contain a wall.",
    "Given two integers a and b, print their greatest common divisor.",
    "A number is called lucky if all its digits are equal. Count the lucky numbers up to n.",
    "Given a list of words, print them sorted by length, breaking ties alphabetically.",
    "Return true if the brackets in the string are balanced, and false otherwise.",
    "There are n cities connected by roads. Find how many cities can be reached from the capital.",
    "Compute the number of ways to climb a staircase of k steps taking one or two steps at a time.",
    "Given the array nums and an integer target, return the indices of the two numbers that add up to target.",
    "Read a matrix and print its transpose.",
    "Print the minimum number of coins needed to pay exactly the given amount.",
]
DETAILS = [
    "Constraints: 1 <= n <= 10^5 and -10^9 <= a_i <= 10^9.",
    "Example 1:\nInput: nums = [2, 7, 11, 15], target = 9\nOutput: [0, 1]",
    "Example 2:\nInput: s = \"abcabcbb\"\nOutput: 3\nExplanation: the answer is \"abc\", with length 3.",
    "Input\n3\n1 2 3\nOutput\n6",
    "The output must match exactly, including spaces and new lines.",
    "Time limit: 1 second. Memory limit: 256 megabytes.",
]


def _const(rng: random.Random) -> int:
    return rng.choice([rng.randint(1, 9), rng.randint(1, 99)])


def _expr(rng: random.Random) -> str:
    return rng.choice(UNARY).format(c=_const(rng), d=rng.randint(1, 9))


def _arith(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.35:
        return str(rng.randint(0, 999) if rng.random() < 0.3 else rng.randint(0, 20))
    left, right = _arith(rng, depth + 1), _arith(rng, depth + 1)
    text = f"{left} {rng.choice(['+', '-', '*', '//', '%'])} {right}"
    return f"({text})" if depth and rng.random() < 0.5 else text


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def _function_doc(rng: random.Random) -> str:
    name, expr = rng.choice(NAMES), _expr(rng)
    xs = sorted(rng.sample(range(-5, 30), 5))
    pairs = "\n".join(f"{name}({x}) = {eval(expr, {}, {'x': x})}" for x in xs)  # noqa: S307 (own templates)
    code = f"def {name}(x):\n    return {expr}"
    return f"{rng.choice(ENGLISH[-1:] + ENGLISH[:3])}\n{pairs}\n{_fenced(code)}"


def _stdin_doc(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        task, body = rng.choice(TASKS)
        code = "n = int(input())\n" + body
    elif kind == 1:
        task, body = rng.choice(LIST_TASKS)
        task = "reads a line of integers and " + task
        code = "nums = list(map(int, input().split()))\n" + body
    else:
        task, body = rng.choice(STRING_TASKS)
        task = "reads a line of text and " + task
        code = "s = input().strip()\n" + body
    if rng.random() < 0.4:
        body = "\n".join("    " + ln for ln in code.splitlines())
        code = f"def main():\n{body}\n\n\nif __name__ == \"__main__\":\n    main()"
    statement = rng.choice(PHRASES).format(task=task) + " " + " ".join(rng.sample(ENGLISH, 2))
    return f"{statement}\n\n{_fenced(code)}"


def _loop_doc(rng: random.Random) -> str:
    v, w = rng.sample(VARS[:9], 2)
    lines = [
        f"def {rng.choice(NAMES)}({v}, {w}):",
        "    result = []",
        f"    for i in range({v}):",
        f"        if i % {rng.randint(2, 5)} == 0:",
        f"            result.append(i * {w})",
        f"        elif i > {rng.randint(1, 20)}:",
        "            continue",
        "        else:",
        f"            result.append({w} - i)",
        "    return result",
        "",
        f"print({rng.choice(NAMES)}({rng.randint(1, 12)}, {rng.randint(-9, 9)}))",
    ]
    return "\n".join(lines)


def _snippet_doc(rng: random.Random) -> str:
    code = rng.choice(SNIPPETS).format(name=rng.choice(NAMES), c=_const(rng), d=rng.randint(1, 9))
    statement = " ".join([rng.choice(STATEMENTS), *rng.sample(DETAILS, 2)])
    return f"{statement}\n\n{_fenced(code)}" if rng.random() < 0.5 else code


def _chat_doc(rng: random.Random) -> str:
    user = _stdin_doc(rng) if rng.random() < 0.5 else _function_doc(rng)
    question, _, answer = user.partition("```python")
    parts = []
    if rng.random() < 0.3:
        parts.append("<|im_start|>system\nYou are a helpful assistant that writes correct Python code.<|im_end|>\n")
    parts.append(f"<|im_start|>user\n{question.strip()}<|im_end|>\n")
    parts.append(f"<|im_start|>assistant\n{rng.choice(ENGLISH[7:10])}\n```python{answer}<|im_end|>\n")
    return "".join(parts)


def _arith_doc(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 6)):
        expr = _arith(rng)
        try:
            value = eval(expr)  # noqa: S307 (expressions from the generator above)
        except ZeroDivisionError:
            continue
        lines.append(f"{expr} = {value}")
    return "\n".join(lines)


def make_corpus(num_docs: int = NUM_DOCS, seed: int = SEED) -> list[str]:
    """The training text of the tiny tokenizer: num_docs documents from a seeded generator."""
    rng = random.Random(seed)
    makers = [_function_doc, _stdin_doc, _loop_doc, _snippet_doc, _chat_doc, _arith_doc]
    return [rng.choice(makers)(rng) for _ in range(num_docs)]


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Byte-level BPE with the ChatML special tokens at ids 0, 1, 2."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    tok.train_from_iterator((piece for doc in corpus for piece in special.split(doc) if piece), trainer=trainer)
    return tok


def tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def model_config(vocab_len: int) -> dict:
    """A tiny Qwen2ForCausalLM (about 1M parameters) sized to the tokenizer."""
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": -(-vocab_len // 64) * 64,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 4,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "torch_dtype": "float32",
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out: Path, num_docs: int = NUM_DOCS, seed: int = SEED) -> Path:
    """Write tokenizer.json, tokenizer_config.json and config.json into out; returns out."""
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(make_corpus(num_docs, seed))
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")
    _write_json(out / "tokenizer_config.json", tokenizer_config())
    _write_json(out / "config.json", model_config(tok.get_vocab_size(with_added_tokens=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "tiny")
    args = parser.parse_args()
    out = build(args.out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
