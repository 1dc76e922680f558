"""The rows of every source: examples, public prompts, the one data error, and multiple choice and
numeric answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

DEFAULT_CATEGORY = "default"  # category of JSONL rows without one

Task = Literal["generative", "multiple_choice", "numeric"]
TASKS: tuple[str, ...] = ("generative", "multiple_choice", "numeric")
LETTERS = "ABCDEFGHIJ"  # option letters of multiple choice rows (2 to 10 options)
ANSWER_LINE = "Answer with the letter of the correct option."
# A number as written in an answer ("-$1,000.50"); a minus right after a word character is an operator.
_ANNOTATION = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 4*33=<<4*33=132>>132
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


def final_number(text: str) -> Decimal | None:
    """The answer number of a GSM8K-style text: the first after the last ``####`` when present, else the
    last number; ``$`` and thousands commas dropped, so ``-$1,000.00`` is ``Decimal("-1000.00")``."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    sign, digits = found[0] if "####" in text else found[-1]
    return Decimal(sign + digits.replace(",", ""))


def without_annotations(text: str) -> str:
    """The text without GSM8K's calculator annotations (``<<4*33=132>>``), which no model-written answer carries."""
    return _ANNOTATION.sub("", text)


def choice_instruction(question: str, choices: tuple[str, ...]) -> str:
    """The question, its lettered options and the answer format line (MMLU and JSONL multiple choice)."""
    options = "".join([f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)])
    return f"{question}{options}\n{ANSWER_LINE}"


def choice_row(lid: str, question: str, choices: tuple[str, ...], letter: str, category: str) -> Row:
    """A multiple choice row whose response is the correct letter and option, e.g. ``"B. Paris"``."""
    return Row(lid, choice_instruction(question, choices), f"{letter}. {choices[LETTERS.index(letter)]}",
               category, "multiple_choice", question, choices)


