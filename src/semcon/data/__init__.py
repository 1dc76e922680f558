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

from semcon.data.examples import (
           ANSWER_LINE,
           DEFAULT_CATEGORY,
           LETTERS,
           TASKS,
           DataError,
           Example,
           Prompt,
           Row,
           Task,
           choice_instruction,
           choice_row,
           final_number,
           without_annotations,
)
from semcon.data.jsonl import PUBLIC_FILE_DOMAIN, read_jsonl, read_prompts
from semcon.data.sources import load_selection
from semcon.data.splits import MIXED, Splits, build_splits, experts_of, public_prompts

__all__ = ["ANSWER_LINE", "DEFAULT_CATEGORY", "LETTERS", "MIXED", "PUBLIC_FILE_DOMAIN", "TASKS", "DataError", "Example",
           "Prompt", "Row", "Splits", "Task", "build_splits", "choice_instruction", "experts_of", "choice_row", "final_number",
           "load_selection", "public_prompts", "read_jsonl", "read_prompts", "without_annotations"]
