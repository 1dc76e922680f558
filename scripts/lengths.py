"""How many rows of each embedded domain fit in ``train.max_length`` tokens, per tokenizer.

    python scripts/lengths.py [MAX_LENGTH ...]     (default 256 384 512 768)

Prints, per model and source, the share of rows (after ``data.max_chars``) whose whole example (chat-template
prompt + response + end-of-turn) fits, and the 95th percentile of the example length. Backs the default of
``train.max_length`` (at least 95% of every embedded domain's rows kept).
"""

from __future__ import annotations

import sys

import numpy as np

from semcon.config import DataConfig, DataSelection
from semcon.data import load_selection
from semcon.member.models import ChatFormat, load_tokenizer

SOURCES = ("wiki", "gsm8k", "mmlu", "chatterbot", "humaneval")


def main(limits: list[int]) -> None:
    models = [m for m in ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b") if _available(m)]
    print(f"{'model':<14} {'source':<11} {'rows':>6} {'p95 tokens':>10} " + " ".join(f"{'≤' + str(n):>7}" for n in limits))
    for model in models:
        fmt = ChatFormat(load_tokenizer(model))
        for source in SOURCES:
            rows = load_selection(DataSelection(source=source), DataConfig().max_chars)
            lengths = np.array([len(fmt.example_ids(e.instruction, e.response)[0]) for e in rows])
            kept = " ".join(f"{(lengths <= n).mean():>7.1%}" for n in limits)
            print(f"{model:<14} {source:<11} {len(rows):>6} {np.percentile(lengths, 95):>10.0f} {kept}")


def _available(model: str) -> bool:
    try:
        load_tokenizer(model)
        return True
    except Exception:  # noqa: BLE001 - an opt-in model that is not installed
        return False


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 384, 512, 768])
