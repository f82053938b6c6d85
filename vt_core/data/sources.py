"""Local data sources: JSONL (or JSON array) files, Parquet files, `datasets` folders written by `save_to_disk`.

Every reader yields `Record`s (the row as a dict, plus the file and 1-based row number it came from) so that
later stages can say exactly which row is malformed. A malformed row raises `DataError` (a ValueError) whose
message names the file, the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FieldSpec = Mapping[str, type | tuple[type, ...]]


class DataError(ValueError):
    """A malformed row: `source` (file), `row` (1-based; the line number for JSONL) and `field` (or None)."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = source if row is None else f"{source}, row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Record:
    """One row of a data source: `data` (the row), `source` (file or folder) and `row` (1-based)."""

    data: dict[str, Any]
    source: str
    row: int

    def error(self, field: str | None, problem: str) -> DataError:
        """A DataError located at this row."""
        return DataError(self.source, self.row, field, problem)


def _type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def _is_instance(value: Any, types: type | tuple[type, ...]) -> bool:
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in wanted:
        return False
    return isinstance(value, wanted)


def check_fields(record: Record, fields: FieldSpec) -> Record:
    """Raise DataError unless every field in `fields` is present in the row with one of the given types."""
    for name, types in fields.items():
        if name not in record.data:
            present = ", ".join(sorted(record.data)) or "none"
            raise record.error(name, f"missing field (fields present: {present})")
        value = record.data[name]
        if not _is_instance(value, types):
            raise record.error(name, f"expected {_type_name(types)}, got {type(value).__name__}")
    return record


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """Rows of a JSON Lines file, one JSON object per line; blank lines are skipped (row = line number)."""
    source = str(path)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(source, line_no, None, f"invalid JSON at column {e.colno}: {e.msg}") from None
            if not isinstance(data, dict):
                raise DataError(source, line_no, None, f"expected a JSON object, got {type(data).__name__}")
            yield Record(data, source, line_no)


def read_json_array(path: str | Path) -> Iterator[Record]:
    """Rows of a file holding one JSON array of objects (row = 1-based index in the array)."""
    source = str(path)
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(source, None, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(items, list):
        raise DataError(source, None, None, f"expected a JSON array of objects, got {type(items).__name__}")
    for i, data in enumerate(items, start=1):
        if not isinstance(data, dict):
            raise DataError(source, i, None, f"expected a JSON object, got {type(data).__name__}")
        yield Record(data, source, i)


def _starts_with_array(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def read_parquet(path: str | Path, batch_size: int = 1024) -> Iterator[Record]:
    """Rows of a Parquet file, streamed by record batch (row = 1-based row index in the file)."""
    import pyarrow.parquet as pq

    source = str(path)
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for data in batch.to_pylist():
            row += 1
            yield Record(data, source, row)


def read_saved_dataset(path: str | Path, split: str | None = None) -> Iterator[Record]:
    """Rows of a `datasets` Dataset (or one split of a DatasetDict) saved with `save_to_disk`."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    source = str(path)
    if isinstance(ds, datasets.DatasetDict):
        names = sorted(ds)
        if split is None:
            if "train" not in ds:
                raise DataError(source, None, None, f"a DatasetDict with splits {names}: pass split=")
            split = "train"
        if split not in ds:
            raise DataError(source, None, None, f"no split {split!r}; splits are {names}")
        ds, source = ds[split], f"{source}[{split}]"
    elif split is not None:
        raise DataError(source, None, None, f"split={split!r} given but the folder holds a single Dataset")
    for i, data in enumerate(ds, start=1):
        yield Record(dict(data), source, i)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _files_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".parquet") and p.is_file())
    if not files:
        raise DataError(str(folder), None, None, "folder has no .jsonl or .parquet files and is not a saved dataset")
    return files


def iter_records(path: str | Path, fields: FieldSpec | None = None, split: str | None = None) -> Iterator[Record]:
    """Records of a local source, format chosen by the path.

    path: a `.jsonl` file, a `.json` file (JSON Lines, or one array of objects), a `.parquet` file, a folder
    written by `save_to_disk`, or a folder of `.jsonl` / `.parquet` files (read in name order).
    fields: optional {name: type or tuple of types}; each row is checked with `check_fields`.
    split: the split of a saved DatasetDict (default "train").
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data source {path} does not exist")
    if path.is_dir():
        if _is_saved_dataset(path):
            records = read_saved_dataset(path, split)
        else:
            records = (r for f in _files_in(path) for r in iter_records(f))
    elif path.suffix == ".jsonl":
        records = read_jsonl(path)
    elif path.suffix == ".json":
        records = read_json_array(path) if _starts_with_array(path) else read_jsonl(path)
    elif path.suffix == ".parquet":
        records = read_parquet(path)
    else:
        raise DataError(str(path), None, None, "unknown format: expected .jsonl, .json, .parquet or a dataset folder")
    for record in records:
        yield check_fields(record, fields) if fields else record


def read_rows(path: str | Path, fields: FieldSpec | None = None, split: str | None = None) -> Iterator[dict]:
    """The rows of `iter_records(path, fields, split)` as plain dicts."""
    for record in iter_records(path, fields, split):
        yield record.data
