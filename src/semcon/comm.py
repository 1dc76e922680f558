"""Analytic communication per client per round: full FedAvg, LoRA-FedAvg and semantic consensus.

Weight-sharing methods move tensors whose size follows from the architecture; semantic consensus moves
answer texts whose size follows from the prompt budget. Parameter counts are computed exactly from the
published layer shapes (``Arch``); the text payload is given raw (prompts x mean answer bytes) and as
really encoded by ``semcon.protocol.encode`` on a seeded synthetic upload, so its compression ratio is
measured rather than assumed. Everything here is pure arithmetic: no model is loaded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcon.protocol import ZSTD_LEVEL, Download, Upload, encode, raw_bytes

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"
DTYPE_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}

# The paper's headline: semantic consensus needs about 1006x less traffic than LoRA-FedAvg on Llama-3.1-405B.
PAPER_RATIO = 1006
PAPER_SETTING = {"arch": "llama-3.1-405b", "rank": 32, "targets": ("q_proj", "v_proj"), "dtype": "bf16",
                 "prompts": 1000, "mean_answer_bytes": 400}


@dataclass(frozen=True, kw_only=True)
class Arch:
    """The shapes of a Llama-style decoder (Llama, Qwen2, SmolLM2, Mistral, ...) that fix its size."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    attention_bias: bool = False  # q/k/v biases (Qwen2 has them)
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        """Fill head_dim and reject impossible shapes."""
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"{self.name}: hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}; give head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        elif not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"{self.name}: head_dim must be a positive integer, got {self.head_dim!r}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q_out), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (q_out, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def num_parameters(self) -> int:
        """All parameters: embeddings, lm_head unless tied, per-layer linears (+ biases) and RMSNorms."""
        shapes = self.linear_shapes()
        per_layer = sum(n_in * n_out for n_in, n_out in shapes.values())
        if self.attention_bias:
            per_layer += sum(shapes[m][1] for m in ("q_proj", "k_proj", "v_proj"))
        if self.mlp_bias:
            per_layer += sum(shapes[m][1] for m in ("gate_proj", "up_proj", "down_proj"))
        per_layer += 2 * self.hidden_size  # input and post-attention norms
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embeddings
        return embeddings + lm_head + self.num_hidden_layers * per_layer + self.hidden_size  # + final norm


# Published Hugging Face config.json values (meta-llama, HuggingFaceTB, Qwen).
ARCHS: dict[str, Arch] = {
    a.name: a for a in (
        Arch(name="llama-3.2-1b", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
             tie_word_embeddings=True),
        Arch(name="llama-3.2-3b", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
             num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
             tie_word_embeddings=True),
        Arch(name="llama-3.1-8b", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
        Arch(name="llama-3.1-70b", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
             num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
        Arch(name="llama-3.1-405b", hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
             num_attention_heads=128, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
        Arch(name="smollm2-135m", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
        Arch(name="qwen2.5-0.5b", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
             attention_bias=True),
        Arch(name="qwen2.5-7b", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
             attention_bias=True),
    )
}

_REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_BIASED_MODEL_TYPES = {"qwen2"}  # Qwen2 always has q/k/v biases; its config.json does not say so


def arch_from_config(config: str | Path | Mapping[str, Any], name: str | None = None) -> Arch:
    """An Arch from a Hugging Face config.json (file, directory holding one, or its parsed dict)."""
    if isinstance(config, Mapping):
        cfg, where = dict(config), "config dict"
        default_name = str(cfg.get("_name_or_path") or cfg.get("model_type") or "custom")
    else:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        where = str(path)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{where}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
        default_name = path.parent.name or path.stem
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):  # multimodal wrappers
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                                                                    cfg["text_config"].get("tie_word_embeddings"))}
    for key in _REQUIRED_KEYS:
        if cfg.get(key) is None:
            raise ValueError(f"{where}: missing required key {key!r} (needs {', '.join(_REQUIRED_KEYS)})")
    heads = cfg["num_attention_heads"]
    try:
        return Arch(
            name=name or default_name,
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or None,
            vocab_size=cfg["vocab_size"],
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings") or False),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") in _BIASED_MODEL_TYPES)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
        )
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def resolve_arch(spec: str) -> Arch:
    """A known architecture by name (case-insensitive) or one read from a config.json path or directory."""
    if spec.lower() in ARCHS:
        return ARCHS[spec.lower()]
    if Path(spec).exists():
        return arch_from_config(spec)
    raise ValueError(f"unknown architecture {spec!r}: use one of {', '.join(ARCHS)} "
                     "or a path to a Hugging Face config.json (or its directory)")


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """LoRA target modules in canonical order: 'all-linear', a comma-separated string, or a list."""
    if isinstance(targets, str):
        if targets.strip() == ALL_LINEAR:
            return LINEAR_MODULES
        targets = targets.split(",")
    names = {t.strip() for t in targets if t.strip()}
    if unknown := sorted(names - set(LINEAR_MODULES)):
        raise ValueError(f"unknown LoRA target(s) {', '.join(unknown)}: "
                         f"valid are {ALL_LINEAR!r} or any of {', '.join(LINEAR_MODULES)}")
    if not names:
        raise ValueError(f"no LoRA targets given: use {ALL_LINEAR!r} or any of {', '.join(LINEAR_MODULES)}")
    return tuple(m for m in LINEAR_MODULES if m in names)


def lora_parameters(arch: Arch, rank: int, targets: str | Iterable[str] = ALL_LINEAR) -> int:
    """LoRA adapter parameters: sum over layers and targeted modules of rank x (in + out)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    shapes = arch.linear_shapes()
    return arch.num_hidden_layers * sum(rank * sum(shapes[m]) for m in parse_targets(targets))


def adapter_bytes(model: str, rank: int, targets: str | Iterable[str]) -> int | None:
    """An fp32 LoRA adapter of ``model`` (a known name, or a model that resolves to a config.json) in bytes; None
    where its shape cannot be read here (a hub id without network)."""
    try:
        from semcon.assets import resolve_model

        arch = ARCHS[model] if model in ARCHS else arch_from_config(resolve_model(model))
    except Exception:  # noqa: BLE001 - a hub id without network, a shape semcon does not know: no figure
        return None
    return lora_parameters(arch, rank, targets) * 4


def dtype_bytes(dtype: str) -> int:
    """Bytes per parameter of a tensor dtype (fp32, fp16, bf16)."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16") from None


_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there one all we can their has been if more when will would who so no other time "
    "model data answer each first two may some these many then its only new used also most people after "
    "between system example because value result question three however number different part where state "
    "while such using form high water small large often through city world during several known since found "
    "process called each under group following important energy early based second light made including "
    "information given patient market study method general local change problem point level country use "
    "same both set area type rate life years common history language function order public health"
).split()


def synthetic_answers(prompts: int, mean_answer_bytes: int, seed: int = 0) -> dict[str, str]:
    """Seeded English-like answers (Zipf-weighted common words, sentences) totalling prompts x mean bytes."""
    rng = random.Random(seed)
    cum_weights, total = [], 0.0
    for rank in range(len(_WORDS)):
        total += 1.0 / (rank + 1)
        cum_weights.append(total)
    lengths = [mean_answer_bytes] * prompts
    for k in range(0, prompts - 1, 2):  # pairs mean+d, mean-d: varied lengths, exact total
        d = rng.randint(0, mean_answer_bytes // 2)
        lengths[k], lengths[k + 1] = mean_answer_bytes + d, mean_answer_bytes - d
    answers = {}
    for k, length in enumerate(lengths):
        parts, size = [], -1  # size of " ".join(parts)
        while size < length:
            words = rng.choices(_WORDS, cum_weights=cum_weights, k=rng.randint(6, 18))
            sentence = " ".join(words).capitalize() + rng.choice((".", ".", ".", ",", "?"))
            parts.append(sentence)
            size += len(sentence) + 1
        answers[f"p{k:04d}"] = " ".join(parts)[:length]
    return answers


@dataclass(frozen=True)
class TextPayload:
    """One client's semantic-consensus traffic in a round: raw UTF-8 and as encoded by the codec."""

    prompts: int
    mean_answer_bytes: int
    raw_up: int
    raw_down: int
    encoded_up: int
    encoded_down: int
    seed: int = 0

    @property
    def compression(self) -> float:
        """Raw over encoded bytes, up and down together."""
        return (self.raw_up + self.raw_down) / (self.encoded_up + self.encoded_down)


def text_payload(prompts: int = 1000, mean_answer_bytes: int = 400, seed: int = 0) -> TextPayload:
    """Measure the semantic-consensus payload by encoding a synthetic upload and its broadcast download."""
    if prompts < 1 or mean_answer_bytes < 1:
        raise ValueError(f"prompts and mean_answer_bytes must be positive, got {prompts} and {mean_answer_bytes}")
    answers = synthetic_answers(prompts, mean_answer_bytes, seed)
    rng = random.Random(seed)  # every answer carries its flag and a float64 confidence, as a real upload does
    up = Upload(round=1, client="client-0", answers=answers, finished=dict.fromkeys(answers, True),
                confidence={pid: -rng.random() for pid in answers})
    labels = synthetic_answers(prompts, mean_answer_bytes, seed + 1)
    down = Download(round=1, labels=labels, finished=dict.fromkeys(labels, True))
    return TextPayload(prompts, mean_answer_bytes, raw_bytes(up), raw_bytes(down),
                       len(encode(up)), len(encode(down)), seed)


def bytes_per_round(arch: Arch, *, rank: int = 16, targets: str | Iterable[str] = ALL_LINEAR,
                    dtype: str = "bf16", prompts: int = 1000, mean_answer_bytes: int = 400,
                    payload: TextPayload | None = None) -> list[dict[str, Any]]:
    """Rows (one per method) of one client's bytes per round, up and down, and the ratio to semantic consensus."""
    nbytes = dtype_bytes(dtype)
    names = parse_targets(targets)
    if payload is None or (payload.prompts, payload.mean_answer_bytes) != (prompts, mean_answer_bytes):
        payload = text_payload(prompts, mean_answer_bytes)
    full, lora = arch.num_parameters(), lora_parameters(arch, rank, names)
    target_label = ALL_LINEAR if names == LINEAR_MODULES else ",".join(names)
    raw_total = payload.raw_up + payload.raw_down
    encoded_total = payload.encoded_up + payload.encoded_down
    methods = [
        ("full FedAvg", full, f"all weights, {dtype}", full * nbytes, full * nbytes),
        ("LoRA-FedAvg", lora, f"r={rank} {target_label}, {dtype}", lora * nbytes, lora * nbytes),
        ("semantic consensus (raw text)", None, f"{prompts} prompts x {mean_answer_bytes} B",
         payload.raw_up, payload.raw_down),
        ("semantic consensus (encoded)", None, f"msgpack + zstd-{ZSTD_LEVEL}, measured",
         payload.encoded_up, payload.encoded_down),
    ]
    return [{"model": arch.name, "method": method, "parameters": params, "detail": detail,
             "up_bytes": up, "down_bytes": down, "total_bytes": up + down,
             "x_semcon_raw": (up + down) / raw_total, "x_semcon_encoded": (up + down) / encoded_total}
            for method, params, detail, up, down in methods]


def lora_fedavg_ratio(arch: Arch, rank: int, targets: str | Iterable[str], dtype: str, prompts: int,
                      mean_answer_bytes: int) -> float:
    """LoRA-FedAvg bytes over raw semantic-consensus bytes (up + down both, which equals one way)."""
    return lora_parameters(arch, rank, targets) * dtype_bytes(dtype) / (prompts * mean_answer_bytes)


def comm_report(archs: list[Arch], rank: int = 16, targets: str | Iterable[str] = ALL_LINEAR,
                dtype: str = "bf16", prompts: int = 1000, mean_answer_bytes: int = 400,
                seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every architecture plus the assumptions behind them, ready for the CLI to print."""
    names = parse_targets(targets)
    payload = text_payload(prompts, mean_answer_bytes, seed)
    rows = [row for arch in archs for row in bytes_per_round(
        arch, rank=rank, targets=names, dtype=dtype, prompts=prompts, mean_answer_bytes=mean_answer_bytes,
        payload=payload)]
    p = PAPER_SETTING
    paper = lora_fedavg_ratio(ARCHS[p["arch"]], p["rank"], p["targets"], p["dtype"], p["prompts"],
                              p["mean_answer_bytes"])
    big = ARCHS[p["arch"]]
    lora_big, shapes = lora_parameters(big, p["rank"], p["targets"]), big.linear_shapes()
    formula = " + ".join(f"({shapes[m][0]}+{shapes[m][1]})" for m in p["targets"])
    assumptions = [
        "Bytes are per client per round; 'up' is client to server, 'down' server to client.",
        f"Full FedAvg sends all {dtype} weights each way (embeddings, lm_head unless tied, layers, norms); "
        "LoRA-FedAvg sends the A and B matrices, rank x (in + out) per targeted module per layer, each way "
        "(the averaged adapter comes back). Tensors are counted uncompressed and without framing.",
        f"Semantic consensus uploads {prompts} answers of {mean_answer_bytes} B mean "
        f"({human_bytes(prompts * mean_answer_bytes)} of UTF-8 text) and downloads the pseudo-labels, one "
        "text per prompt of the same mean length, broadcast (prompts without consensus would make it smaller).",
        f"'encoded' is measured, not assumed: a seeded synthetic upload and download of English-like text "
        f"(Zipf-weighted {len(_WORDS)}-word list, exact total length) really encoded by semcon.protocol.encode "
        f"(msgpack + zstd level {ZSTD_LEVEL}): {human_bytes(payload.raw_up + payload.raw_down)} raw -> "
        f"{human_bytes(payload.encoded_up + payload.encoded_down)} ({payload.compression:.2f}x). Real model "
        "answers compress differently; a run's comm ledger records the actual bytes.",
        "Both directions are counted for every method; since each is symmetric, every ratio equals the "
        "one-way ratio.",
        f"Paper check (arXiv 2605.11857 reports ~{PAPER_RATIO}x vs LoRA-FedAvg on Llama-3.1-405B): with LoRA "
        f"r={p['rank']} on {','.join(p['targets'])} in {p['dtype']} ({lora_big:,} parameters = "
        f"{big.num_hidden_layers} layers x {p['rank']} x ({formula})) against {p['prompts']} x "
        f"{p['mean_answer_bytes']} B raw text, exact shapes give {paper:.1f}x "
        f"({(paper / PAPER_RATIO - 1) * 100:+.1f}% from the paper; the paper's exact text volume is not known).",
    ]
    return rows, assumptions


def human_bytes(n: float) -> str:
    """A byte count in decimal units with three significant digits, e.g. '1.23 GB'."""
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n < 1000:
        return f"{sign}{int(n)} B"
    for unit in ("KB", "MB", "GB", "TB", "PB", "EB"):
        n /= 1000
        text = f"{n:.2f}" if n < 9.995 else f"{n:.1f}" if n < 99.95 else f"{n:.0f}"
        if float(text) < 1000 or unit == "EB":
            return f"{sign}{text} {unit}"
    raise AssertionError("unreachable")
