"""Generation engines side by side on SmolLM2-135M: semcon's continuous batch against its previous static engine,
HF's batched ``generate`` and, when installed, CTranslate2 (fp32) on the same merged weights.

Every engine answers the same public prompts of the demo's domains with the chat template, greedily, at most
``--max-new-tokens`` each; with ``--clients N`` every prompt is answered by N clients, each through its own
LoRA adapter on one base model (random adapters, seeded): semcon's engines take all N x prompts rows in one
queue, HF and CTranslate2 answer client by client (adapter active, or merged). Each engine runs in a process
of its own (its peak RSS is its own), one after another. Useful tokens are those up to end-of-turn.

Prints one JSON object: per engine useful tokens/s, seconds, peak RSS, the average active rows per decode
step (useful tokens / decode steps) and ``fraction_of_bound`` (its rate over the compute bound: the measured
matmul rate at the decode step's shape, [active rows x 576] x [576 x 1536], over 2 x parameters FLOPs per
token); the ratios against the static engine; how many rows' token ids equal the static engine's; and the
continuous engine's profile (top operators on its first 64 rows). Targets at the study's shape
(``--clients 4 --prompts 256 --max-new-tokens 384``): >= 2.5x the static engine and >= 0.5 of the bound; at the
demo's (``--prompts 64 --max-new-tokens 128``): >= 1.5x.

    python benchmarks/bench_generate.py [--clients 1] [--prompts 64] [--max-new-tokens 128] [--engines ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ENGINES = ("continuous", "static", "hf", "ctranslate2")


def prompts(n: int) -> list[str]:
    from semcon.config import load_config
    from semcon.data import build_splits

    cfg = load_config("configs/demo.yaml", [f"public.num_prompts={n}"])
    return [p.instruction for p in build_splits(cfg).public]


def linear_gflops(rows: int, k: int = 576, n: int = 1536, reps: int = 50) -> float:
    """The best rate of ``reps`` [rows x k] x [k x n] products in fp32 (the decode step's MLP shape)."""
    a, w = torch.randn(rows, k), torch.randn(n, k)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * k * n / best / 1e9


def backbone(clients: int):
    """SmolLM2-135M with ``clients`` seeded random adapters (names c0..), and the slots that hold them."""
    from semcon.config import LoraConfig
    from semcon.member.models import Backbone

    bb = Backbone.load("smollm2-135m", torch.float32, torch.device("cpu"))
    names = [f"c{i}" for i in range(clients)]
    for i, name in enumerate(names):
        bb.add_adapter(name, LoraConfig(), seed=i)
        torch.manual_seed(100 + i)
        bb.load_adapter_state(name, {k: torch.randn_like(v) * 0.02 for k, v in bb.adapter_state(name).items()})
    return bb, names


def run_engine(engine: str, texts: list[str], clients: int, cap: int, batch: int) -> dict:
    """One engine's answers (token ids per row, client-major) with its time and decode steps."""
    from semcon.member.generate import generate

    bb, names = backbone(clients)
    fmt, eos = bb.fmt, sorted(bb.fmt.eos_ids())
    steps = [0]

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] == 1:
            steps[0] += 1

    if engine in ("continuous", "static"):
        slots = bb.hold(names)
        with bb.active(names[0]) as model:
            generate(model, fmt, texts[:4], max_new_tokens=4, batch_size=4, device=bb.device, dtype=bb.dtype,
                     engine=engine)  # warm-up
            hook = model.get_decoder().register_forward_pre_hook(count, with_kwargs=True)
            start = time.perf_counter()
            outs = generate(model, fmt, texts * clients, max_new_tokens=cap, batch_size=batch, device=bb.device,
                            dtype=bb.dtype, engine=engine,
                            adapters=None if clients == 1 else [s for s in slots for _ in texts])
            seconds = time.perf_counter() - start
            hook.remove()
        rows = [g.tokens for g in outs]
    elif engine == "hf":
        rows, seconds = [], 0.0
        for name in names:
            with bb.active(name) as model:
                hook = model.get_decoder().register_forward_pre_hook(count, with_kwargs=True)
                got, took = hf_batched(model, fmt, texts, cap, batch, eos)
                hook.remove()
            rows, seconds = rows + got, seconds + took
    else:
        rows, seconds = ctranslate2_rows(bb, names, texts, cap, batch, eos)
    useful = sum(len(r) for r in rows)
    return {"rows": rows, "seconds": seconds, "useful_tokens": useful, "decode_steps": steps[0]}


def hf_batched(model, fmt, texts: list[str], cap: int, batch: int, eos: list[int]) -> tuple[list[list[int]], float]:
    """HF ``generate`` on left-padded batches of prompts sorted by length, stopping at EOS (rows in ``texts``'
    order, cut at their first end-of-turn)."""
    prompts = [fmt.prompt_ids(t) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    rows: list[list[int]] = [[] for _ in prompts]
    seconds = 0.0
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            part = order[start:start + batch]
            width = max(len(prompts[i]) for i in part)
            ids = torch.tensor([[fmt.tok.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in part])
            mask = (torch.arange(width)[None] >= torch.tensor([width - len(prompts[i]) for i in part])[:, None]).long()
            begin = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cap, do_sample=False,
                                 eos_token_id=eos, pad_token_id=fmt.tok.pad_token_id)
            seconds += time.perf_counter() - begin
            for i, row in zip(part, out[:, width:].tolist()):
                rows[i] = row[:next((k for k, t in enumerate(row) if t in eos), len(row))]
    return rows, seconds


def ctranslate2_rows(bb, names, texts, cap, batch, eos) -> tuple[list[list[int]], float]:
    """CTranslate2 fp32 on each client's merged weights (converted first, not timed)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    rows, seconds = [], 0.0
    prompts = [bb.fmt.tok.convert_ids_to_tokens(bb.fmt.prompt_ids(t)) for t in texts]
    for name in names:
        with tempfile.TemporaryDirectory() as tmp, bb.active(name) as model:
            merged = Path(tmp) / "merged"
            model.merge_and_unload().save_pretrained(merged) if hasattr(model, "merge_and_unload") else \
                model.save_pretrained(merged)
            bb.fmt.tok.save_pretrained(merged)
            TransformersConverter(str(merged)).convert(str(Path(tmp) / "ct2"), quantization="float32")
            generator = ctranslate2.Generator(str(Path(tmp) / "ct2"), device="cpu", inter_threads=1, intra_threads=2)
            begin = time.perf_counter()
            out = generator.generate_batch(prompts, max_length=cap, sampling_topk=1, max_batch_size=batch,
                                           include_prompt_in_result=False, end_token=[bb.fmt.tok.convert_ids_to_tokens(e)
                                                                                     for e in eos])
            seconds += time.perf_counter() - begin
            rows += [r.sequences_ids[0] for r in out]
    return rows, seconds


def profile_top(texts: list[str], clients: int, cap: int, batch: int, top: int = 8) -> list[str]:
    """The continuous engine's top operators by own CPU time on its first 64 rows."""
    from torch.profiler import ProfilerActivity, profile

    from semcon.member.generate import generate

    bb, names = backbone(clients)
    slots = bb.hold(names)
    rows = (texts * clients)[:64]
    with bb.active(names[0]) as model, profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, bb.fmt, rows, max_new_tokens=min(cap, 128), batch_size=batch, device=bb.device,
                 dtype=bb.dtype, adapters=None if clients == 1 else [slots[i // len(texts)] for i in range(len(rows))])
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [f"{e.key}: {100 * e.self_cpu_time_total / total:.0f}% ({e.count} calls)"
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]]


def child(args) -> None:
    """``--only ENGINE``: run one engine and write its result (with this process's peak RSS) to ``--to``."""
    torch.set_num_threads(2)
    texts = prompts(args.prompts)
    result = run_engine(args.only, texts, args.clients, args.max_new_tokens, args.batch)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.to).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--engines", default="continuous,static,hf,ctranslate2")
    ap.add_argument("--only", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        return child(args)
    torch.set_num_threads(2)
    results, skipped = {}, {}
    for engine in args.engines.split(","):
        if engine == "ctranslate2":
            try:
                import ctranslate2  # noqa: F401
            except ImportError:
                skipped[engine] = "not installed"
                continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--only", engine, "--to", out.name, "--clients", str(args.clients),
                   "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
                   "--batch", str(args.batch)]
            print(f"{engine}...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            results[engine] = json.loads(Path(out.name).read_text())
    params = 134_515_008  # SmolLM2-135M (tied embeddings counted once)
    report = {"bench": "generate", "clients": args.clients, "prompts": args.prompts, "rows": args.clients * args.prompts,
              "max_new_tokens": args.max_new_tokens, "batch": args.batch, "dtype": "float32", "engines": {}}
    for engine, r in results.items():
        rate = r["useful_tokens"] / r["seconds"]
        active = r["useful_tokens"] / max(r["decode_steps"], 1)
        bound = linear_gflops(max(round(active), 1)) * 1e9 / (2 * params)
        report["engines"][engine] = {"useful_tokens_per_s": round(rate, 1), "seconds": round(r["seconds"], 1),
                                     "useful_tokens": r["useful_tokens"], "active_rows_per_step": round(active, 1),
                                     "bound_tokens_per_s": round(bound, 1), "fraction_of_bound": round(rate / bound, 3),
                                     "peak_rss_mb": r["peak_rss_mb"]}
    if "static" in results:
        base = report["engines"]["static"]["useful_tokens_per_s"]
        report["ratio_to_static"] = {e: round(v["useful_tokens_per_s"] / base, 2) for e, v in report["engines"].items()}
        same = {e: sum(a == b for a, b in zip(r["rows"], results["static"]["rows"])) for e, r in results.items()}
        report["rows_equal_to_static"] = same
    report["skipped"] = skipped
    if "continuous" in results:
        report["profile_continuous"] = profile_top(prompts(args.prompts), args.clients, args.max_new_tokens,
                                                   args.batch)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
