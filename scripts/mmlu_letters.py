"""Which option letter the base SmolLM2-135M picks on the study's MMLU-medicine evaluation rows, with each
multiple-choice prompt, against the correct letters: is its MMLU accuracy knowledge or letter bias?

    .venv/bin/python scripts/mmlu_letters.py [configs/study.yaml]
"""

import sys
from collections import Counter

import torch

from semcon.config import load_config
from semcon.data.splits import build_splits
from semcon.member.evaluate import LETTERS, answer_letter, choice_ids, last_logits
from semcon.member.models import Backbone


def main(config: str = "configs/study.yaml") -> None:
    rows = build_splits(load_config(config)).eval["mmlu:medicine"]
    bb = Backbone.load("smollm2-135m", torch.float32, torch.device("cpu"))
    gold = [LETTERS.index(answer_letter(e.response)) for e in rows]
    for prompt in ("chat", "lm_eval"):
        items = [choice_ids(bb.fmt, e, prompt) for e in rows]
        picks = []
        for start in range(0, len(items), 8):
            group = items[start:start + 8]
            logits = last_logits(bb.model, bb.fmt, [context for context, _ in group], bb.device, bb.dtype)
            picks += [int(torch.argmax(row[[option[0] for option in options]]))
                      for row, (_, options) in zip(logits, group)]
        hits = sum(p == g for p, g in zip(picks, gold))
        print(f"{prompt}: picks {dict(sorted(Counter(LETTERS[p] for p in picks).items()))}, correct "
              f"{dict(sorted(Counter(LETTERS[g] for g in gold).items()))}, accuracy {hits / len(gold):.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
