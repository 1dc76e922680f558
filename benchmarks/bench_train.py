"""semcon's LoRA SFT step against a plain peft fp32 step on the same examples (SmolLM2-135M, r=16 all-linear).

Each side runs in its own subprocess (so peak RSS is its own) on the same 64 real SFT examples
(wiki + GSM8K + chatterbot, prompt masked). Prints one JSON line: tokens/s of each, ``speedup``
(target >= 2) and ``rss_ratio`` of peak RSS (target <= 0.5).

    python benchmarks/bench_train.py [--steps 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def examples(n: int = 64):
    """Real (instruction, response) pairs from three embedded domains, the demo's mix."""
    from semcon.config import DataSelection
    from semcon.data import load_selection

    rows = []
    for sel in (DataSelection(source="wiki", categories=["Geography"]), DataSelection(source="gsm8k"),
                DataSelection(source="chatterbot")):
        rows += load_selection(sel, max_chars=2000)[: n // 3 + 1]
    return [(r.instruction, r.response, 1.0) for r in rows[:n]]


def worker(side: str, steps: int, batch: int, max_length: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from semcon.config import LoraConfig
    from semcon.member.models import Backbone, ChatFormat, load_tokenizer, pick_dtype
    from semcon.member.train import collate, length_grouped_batches, tokenize

    device = torch.device("cpu")
    tok = load_tokenizer("smollm2-135m")
    data, _ = tokenize(ChatFormat(tok), examples(), max_length)
    if side == "semcon":
        import random

        from semcon.member.train import train_lora

        dtype = pick_dtype("auto", device)
        bb = Backbone.load("smollm2-135m", dtype, device)
        bb.add_adapter("bench", LoraConfig(), seed=0)
        with bb.active("bench") as model:
            # warm-up step, then the timed steps over the same length-grouped batches
            train_lora(model, bb.fmt, data, steps=1, batch_size=batch, lr=2e-4, seed=0, device=device, dtype=dtype)
            batches = length_grouped_batches(data, batch, random.Random(0))[:steps]
            subset = [data[i] for b in batches for i in b]
            start = time.perf_counter()
            stats = train_lora(model, bb.fmt, subset, steps=len(batches), batch_size=batch, lr=2e-4, seed=0,
                               device=device, dtype=dtype)
        seconds, tokens = time.perf_counter() - start, stats.tokens
    else:
        from peft import LoraConfig as PeftLora, get_peft_model

        from semcon.member.models import load_causal_lm

        model = load_causal_lm("smollm2-135m", torch.float32, device)
        lora = LoraConfig()  # the same adapter as semcon's default: r=16, all linear layers
        model = get_peft_model(model, PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        model.train()
        # plain batches in data order, padded to the longest row: what a simple loop does
        batches = [list(range(i, i + batch)) for i in range(0, len(data) - batch + 1, batch)][: steps + 1]
        tokens, seconds = 0, 0.0
        for k, b in enumerate(batches):
            t = collate([data[i] for i in b], tok.pad_token_id, device)
            start = time.perf_counter()
            out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], labels=t["labels"])
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k > 0:  # the first step is the warm-up
                seconds += time.perf_counter() - start
                tokens += int(t["attention_mask"].sum())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"tokens_per_s": tokens / seconds, "peak_rss_gb": rss, "seconds": seconds, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--worker", choices=["semcon", "peft"])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.max_length)))
        return
    res = {}
    for side in ("peft", "semcon"):
        cmd = [sys.executable, __file__, "--worker", side, "--steps", str(args.steps), "--batch", str(args.batch),
               "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[side] = json.loads(out.strip().splitlines()[-1])
        print(f"{side:>6}: {res[side]['tokens_per_s']:.0f} tok/s, peak RSS {res[side]['peak_rss_gb']:.2f} GiB",
              file=sys.stderr)
    print(json.dumps({
        "bench": "train", "batch": args.batch, "steps": args.steps,
        "peft_tokens_per_s": round(res["peft"]["tokens_per_s"], 1),
        "semcon_tokens_per_s": round(res["semcon"]["tokens_per_s"], 1),
        "speedup": round(res["semcon"]["tokens_per_s"] / res["peft"]["tokens_per_s"], 2),
        "peft_peak_rss_gb": round(res["peft"]["peak_rss_gb"], 2),
        "semcon_peak_rss_gb": round(res["semcon"]["peak_rss_gb"], 2),
        "rss_ratio": round(res["semcon"]["peak_rss_gb"] / res["peft"]["peak_rss_gb"], 3),
    }))


if __name__ == "__main__":
    main()
