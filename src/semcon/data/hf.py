"""Hugging Face ``datasets`` as a source (``source: hf``): a hub name, a ``save_to_disk`` directory or local
json/jsonl/csv/parquet files, read through ``datasets`` and validated like the user's JSONL rows."""

from __future__ import annotations

import functools
from pathlib import Path

from semcon.assets import hub_offline
from semcon.config import DataSelection
from semcon.data.examples import DEFAULT_CATEGORY, DataError, Row
from semcon.data.jsonl import _checked_row

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def describe(sel: DataSelection) -> str:
    """How errors name a selection: ``hf data set PATH (subset) split S``."""
    return f"hf data set {sel.path}" + (f" ({sel.subset})" if sel.subset else "") + f" split {sel.split!r}"


def _load(sel: DataSelection):
    """The selection's split as a ``datasets.Dataset``; DataError naming it when it cannot be loaded."""
    import datasets

    datasets.disable_progress_bars()
    path, where = Path(sel.path), describe(sel)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if sel.split not in loaded:
                    raise DataError(f"{where}: no such split; it has {', '.join(loaded)}")
                loaded = loaded[sel.split]
            return loaded
        if path.is_file():
            if path.suffix not in FILE_BUILDERS:
                raise DataError(f"{where}: cannot read {path.suffix or 'extensionless'} files; use "
                                f"{', '.join(FILE_BUILDERS)} or a save_to_disk directory")
            return datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files={sel.split: str(path)}, split=sel.split)
        return datasets.load_dataset(str(sel.path), sel.subset, split=sel.split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (not found, offline, bad split, bad file)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = " (HF_HUB_OFFLINE is set: set HF_HUB_OFFLINE=0 to reach the hub)" if hub_offline() and not path.exists() else ""
        raise DataError(f"{where}: cannot load ({e.__class__.__name__}: {reason[:200]}){hint}") from None


def hf_rows(sel: DataSelection) -> tuple[Row, ...]:
    """The rows of an hf selection, each checked as a JSONL line is (one line naming the data set and row)."""
    return _rows(sel.model_dump_json(exclude={"name", "categories"}))


@functools.lru_cache(maxsize=8)
def _rows(key: str) -> tuple[Row, ...]:  # cached per process, keyed by what decides the rows
    sel = DataSelection.model_validate_json(key)
    ds, where = _load(sel), describe(sel)
    columns = {"instruction": sel.instruction, "response": sel.response}
    if sel.category:
        columns["category"] = sel.category
    if missing := [c for c in columns.values() if c not in ds.column_names]:
        raise DataError(f"{where}: no column {', '.join(map(repr, missing))}; it has {', '.join(ds.column_names)}")
    rows = []
    for i, record in enumerate(ds.select_columns(list(dict.fromkeys(columns.values())))):
        obj = {key: record[column] for key, column in columns.items()} | {"task": sel.task}
        if "category" in obj and obj["category"] is not None and not isinstance(obj["category"], str):
            obj["category"] = str(obj["category"])  # class labels are often integers
        _checked_row(obj, f"{where} row {i}")
        rows.append(Row("", obj["instruction"], obj["response"], obj.get("category") or DEFAULT_CATEGORY, sel.task))
    if not rows:
        raise DataError(f"{where}: no rows")
    return tuple(rows)
