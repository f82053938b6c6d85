"""Config plumbing shared by every recipe: dataclass configs, one small CLI layer, printing and saving.

Recipes define nested dataclasses (one field per section, e.g. ``cfg.model.path``) with Python presets,
and override them from the command line as ``--section.field value`` (``--field value`` for top-level
fields; ``--flag`` alone sets a bool to true). Values are parsed by the field's annotation: bool, int,
float, str, Optional[...] (``none`` gives None), Literal[...] (checked), tuple/list (comma separated).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def _parse_value(text: str, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        if len(args) == 1:
            return _parse_value(text, args[0], where)
        for a in args:
            try:
                return _parse_value(text, a, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: cannot parse {text!r} as {tp}")
    if origin is Literal:
        for choice in get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError(f"{where}: {text!r} is not one of {', '.join(map(str, get_args(tp)))}")
    if origin in (list, tuple):
        inner = get_args(tp)[0] if get_args(tp) else str
        items = [_parse_value(t.strip(), inner, where) for t in text.split(",") if t.strip()]
        return items if origin is list else tuple(items)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean (true/false), got {text!r}")
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {text!r}") from None
    raise ValueError(f"{where}: fields of type {tp} cannot be set from the command line")


def _field_types(obj: Any) -> dict[str, Any]:
    return get_type_hints(type(obj))


def _is_bool(tp: Any) -> bool:
    return tp is bool or (get_origin(tp) in (Union, types.UnionType) and bool in get_args(tp))


def apply_overrides(cfg: Any, argv: list[str]) -> Any:
    """Apply ``--a.b value`` overrides to the dataclass ``cfg`` in place and return it.

    Raises ValueError naming the option when it is unknown or its value does not parse.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}: options look like --section.field value")
        key, _, inline = arg[2:].partition("=")
        parts = key.replace("-", "_").split(".")
        target = cfg
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                raise ValueError(f"unknown option --{key}: no section {part!r}")
            target = getattr(target, part)
        name = parts[-1]
        if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
            known = ", ".join(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else ""
            raise ValueError(f"unknown option --{key} (known here: {known})")
        tp = _field_types(target)[name]
        if dataclasses.is_dataclass(getattr(target, name)):
            raise ValueError(f"--{key} is a section; set its fields as --{key}.FIELD value")
        if inline:
            text = inline
        elif _is_bool(tp) and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            text = "true"
        else:
            if i + 1 == len(argv):
                raise ValueError(f"option --{key} needs a value")
            i += 1
            text = argv[i]
        setattr(target, name, _parse_value(text, tp, f"--{key}"))
        i += 1
    return cfg


def parse_cli(cfg: Any, argv: list[str] | None = None) -> Any:
    """Apply the command line (``sys.argv[1:]`` by default) to ``cfg``; exit with a message on bad options."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(format_config(cfg))
        raise SystemExit(0)
    try:
        return apply_overrides(cfg, argv)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON-serialisable data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def format_config(cfg: Any, prefix: str = "") -> str:
    """One ``--section.field = value`` line per field: the resolved config, in CLI spelling."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(format_config(value, f"{prefix}{f.name}."))
        else:
            lines.append(f"--{prefix}{f.name} = {value!r}")
    return "\n".join(lines)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


__all__ = ["apply_overrides", "parse_cli", "to_dict", "format_config", "save_config"]
