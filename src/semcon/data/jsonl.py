"""The user's own JSONL files: data rows (instruction, response, optional category and task) and public
prompts, each bad line reported as one line naming the file and line."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from semcon.data.examples import (
    DEFAULT_CATEGORY,
    LETTERS,
    TASKS,
    DataError,
    Prompt,
    Row,
    choice_row,
    final_number,
)

log = logging.getLogger(__name__)

PUBLIC_FILE_DOMAIN = "public"  # Prompt.domain of prompts read from public.path


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


def _turns(messages, where: str, key: str) -> list[tuple[str, str]]:
    """``(role, content)`` of a list of chat messages (``{"role": ..., "content": ...}``), else DataError."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {key!r} must be a non-empty list of {{'role', 'content'}} messages")
    turns = []
    for k, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: {key}[{k}] must be an object with string 'role' and 'content'")
        turns.append((m["role"], m["content"]))
    return turns


def _single_turn(turns: list[tuple[str, str]], where: str, need_answer: bool = True) -> tuple[str, str | None]:
    """The instruction (a system message, if any, put before the user's) and the assistant's answer of a
    single-turn conversation."""
    roles = [r for r, _ in turns]
    shape = ["system"] * (roles[:1] == ["system"]) + ["user"] + ["assistant"] * need_answer
    if roles != shape:
        raise DataError(f"{where}: only single-turn conversations can be rows (an optional system message, one user "
                        f"message{', one assistant message' if need_answer else ''}); got roles {', '.join(roles)}")
    text = dict(turns)
    instruction = f"{text['system']}\n\n{text['user']}" if "system" in text else text["user"]
    return instruction, text.get("assistant")


def _as_instruction(obj: dict, where: str) -> dict:
    """A row in TRL's conversational (``messages``) or prompt-completion (``prompt``/``completion``, strings or
    message lists) format as the instruction/response row it is; other rows as they are."""
    if "instruction" in obj:
        return obj
    if "messages" in obj:
        instruction, response = _single_turn(_turns(obj["messages"], where, "messages"), where)
    elif "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, list) or isinstance(completion, list):
            instruction, response = _single_turn(_turns(prompt, where, "prompt") + _turns(completion, where, "completion"),
                                                 where)
        else:
            instruction, response = prompt, completion
    else:
        return obj
    return {k: v for k, v in obj.items() if k not in ("messages", "prompt", "completion")} | {
        "instruction": instruction, "response": response}


def _checked_row(obj: dict, where: str) -> dict:
    """Validate one row: ``instruction``, ``response`` (not for multiple choice, whose response is built from
    ``answer``), optional ``category`` and ``task`` (null counts as absent). TRL's ``messages`` and
    ``prompt``/``completion`` rows are read as the instruction/response row they hold."""
    obj = _as_instruction(obj, where)
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
    """Read a public prompt file: JSONL with ``instruction`` (or TRL's ``prompt``, or ``messages`` of one user
    turn) and optional ``id`` (default ``p0000``...).

    Repeated instructions are dropped with a warning; a repeated id is an error.
    """
    prompts: list[Prompt] = []
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    for lineno, obj in _jsonl_objects(path):
        where = f"{path}:{lineno}"
        if "instruction" not in obj and "messages" in obj:
            obj = {**obj, "instruction": _single_turn(_turns(obj["messages"], where, "messages"), where, False)[0]}
        elif "instruction" not in obj and "prompt" in obj:
            prompt = obj["prompt"]
            obj = {**obj, "instruction": _single_turn(_turns(prompt, where, "prompt"), where, False)[0]
                   if isinstance(prompt, list) else prompt}
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


