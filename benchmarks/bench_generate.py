"""semcon's batched greedy generation against what a practitioner would write (SmolLM2-135M).

All sides answer the same 64 public prompts from the demo's three domains (answers of very different
lengths) with the chat template and ``max_new_tokens``; useful tokens are those up to EOS. The baselines:
HF ``model.generate`` on left-padded batches of 64 prompts sorted by length, stopping at EOS, in the same
dtype (bf16 where the CPU has it natively, else fp32); and (``--loop``) a per-prompt ``model.generate``
loop. Prints one JSON line: tokens/s of each, ``speedup_vs_hf_batched`` (target >= 1.5), ``speedup``
over the loop (target >= 15) and ``fraction_of_peak``: semcon's rate over the compute-bound rate
(measured matmul GFLOP/s in semcon's dtype / (2 x parameters)).

    python benchmarks/bench_generate.py [--prompts 64] [--max-new-tokens 64] [--loop]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def prompts(n: int) -> list[str]:
    from semcon.config import load_config
    from semcon.data import build_splits

    cfg = load_config("configs/demo.yaml", [f"public.num_prompts={n}"])
    return [p.instruction for p in build_splits(cfg).public]


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """The CPU's matmul rate in ``dtype``: the best of ``reps`` timed ``n``-square products (this shared box's
    rate swings by a third between runs; a peak is the best it does)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def useful(new: list[int], eos: list[int]) -> int:
    """Generated tokens up to (excluding) the first end-of-turn token."""
    return next((k for k, t in enumerate(new) if t in eos), len(new))


def hf_batched(model, fmt, texts: list[str], max_new_tokens: int, batch: int) -> tuple[int, float]:
    """Useful tokens and seconds of HF ``generate`` on left-padded, length-sorted batches."""
    eos = sorted(fmt.eos_ids())
    prompts = sorted((fmt.prompt_ids(t) for t in texts), key=len, reverse=True)
    tokens, seconds = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            rows = prompts[start:start + batch]
            width = max(map(len, rows))
            ids = torch.tensor([[fmt.tok.pad_token_id] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            begin = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=fmt.tok.pad_token_id)
            seconds += time.perf_counter() - begin
            tokens += sum(useful(row[width:].tolist(), eos) for row in out)
    return tokens, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--loop", action="store_true", help="also time the per-prompt generate loop (minutes)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from semcon.generate import generate
    from semcon.models import Backbone, load_causal_lm, pick_dtype

    device = torch.device("cpu")
    texts = prompts(args.prompts)
    dtype = pick_dtype("auto", device)
    Backbone.load("smollm2-135m", dtype, device)  # first load pays the library imports
    start = time.perf_counter()
    bb = Backbone.load("smollm2-135m", dtype, device)  # the cached safetensors copy: target < 2 s
    load_s = time.perf_counter() - start
    fmt = bb.fmt

    generate(bb.model, fmt, texts[:4], max_new_tokens=4, batch_size=4, device=device, dtype=dtype)  # warm-up
    start = time.perf_counter()
    ours = generate(bb.model, fmt, texts, max_new_tokens=args.max_new_tokens, batch_size=args.batch,
                    device=device, dtype=dtype)
    ours_s = time.perf_counter() - start
    ours_tokens = sum(len(g.tokens) for g in ours)
    del bb

    plain = load_causal_lm("smollm2-135m", dtype, device)
    hf_batched(plain, fmt, texts[:4], 4, 4)  # warm-up
    hf_tokens, hf_s = hf_batched(plain, fmt, texts, args.max_new_tokens, args.batch)
    eos = sorted(fmt.eos_ids())
    loop_tokens, loop_s = 0, 0.0
    if args.loop:
        plain32 = load_causal_lm("smollm2-135m", torch.float32, device)
        with torch.inference_mode():
            for i, text in enumerate(texts):
                ids = torch.tensor([fmt.prompt_ids(text)])
                start = time.perf_counter()
                out = plain32.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos,
                                       pad_token_id=fmt.tok.pad_token_id)
                loop_s += time.perf_counter() - start
                loop_tokens += useful(out[0, ids.shape[1]:].tolist(), eos)
                print(f"\rper-prompt loop {i + 1}/{len(texts)}", end="", file=sys.stderr)
        print(file=sys.stderr)

    params = sum(p.numel() for p in plain.parameters())
    peak = matmul_gflops(dtype) * 1e9 / (2 * params)
    ours_rate, hf_rate = ours_tokens / ours_s, hf_tokens / hf_s
    lengths = sorted(len(g.tokens) for g in ours)
    out = {
        "bench": "generate", "prompts": len(texts), "max_new_tokens": args.max_new_tokens,
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "cached_load_s": round(load_s, 2),
        "answer_tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "semcon_tokens_per_s": round(ours_rate, 1), "hf_batched_tokens_per_s": round(hf_rate, 1),
        "speedup_vs_hf_batched": round(ours_rate / hf_rate, 2),
        "peak_tokens_per_s": round(peak, 1), "fraction_of_peak": round(ours_rate / peak, 3),
    }
    if args.loop:
        out |= {"loop_tokens_per_s": round(loop_tokens / loop_s, 1), "speedup": round(ours_rate * loop_s / loop_tokens, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
