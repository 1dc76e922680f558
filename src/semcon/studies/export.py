"""``semcon export``: a finished run's adapters as directories other tools load: a PEFT adapter
(``PeftModel.from_pretrained``, lm-evaluation-harness's ``peft=``, vLLM, TGI) or the base model with the adapter
merged in (``AutoModelForCausalLM.from_pretrained``), each with a model card stating where it came from; and
``semcon evaluate``: such a directory scored on the user's own held-out JSONL."""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

import torch
import yaml

from semcon.assets import EMBEDDED_MODELS
from semcon.config import RunConfig
from semcon.member.models import load_causal_lm, load_tokenizer
from semcon.rounds.rundir import RunDirError, finished_run

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


ExportError = RunDirError  # what export raises: one line naming the run directory or --out


def adapter_dirs(run_dir: Path, client: str | None) -> dict[str, Path]:
    """The run's saved adapters by client (one, with ``client``), or ExportError naming what there is."""
    found = {p.name: p for p in sorted((Path(run_dir) / "adapters").glob("*"))
             if all((p / f).is_file() for f in ADAPTER_FILES)}
    if not found:
        raise ExportError(f"{run_dir}: no adapters saved (adapters/<client>/ with {', '.join(ADAPTER_FILES)}; a "
                          "Flower run leaves them on the nodes: export there)")
    if client is None:
        return found
    if client not in found:
        raise ExportError(f"{run_dir}: no adapter of client {client!r}; it has {', '.join(found)}")
    return {client: found[client]}


def base_model(cfg: RunConfig, client: str) -> str:
    """The model spec a client's adapter was trained on (the pooled model of ``centralized``: the first client's)."""
    return next((c.model for c in cfg.clients if c.name == client), cfg.clients[0].model)


def export(run_dir: Path, out: Path, client: str | None = None, merge: bool = False) -> list[Path]:
    """Write each (or one) client's adapter, or merged model, with its model card. One client's goes to ``out``
    itself with ``client``, else each to ``out/<client>``. Returns the directories written."""
    cfg, summary = finished_run(run_dir)
    written = []
    for name, source in adapter_dirs(run_dir, client).items():
        target = Path(out) if client is not None else Path(out) / name
        if target.exists() and any(target.iterdir()):
            raise ExportError(f"{target} is not empty: choose a new --out")
        target.mkdir(parents=True, exist_ok=True)
        spec = base_model(cfg, name)
        if merge:
            merged_model(spec, source).save_pretrained(target)
            load_tokenizer(spec).save_pretrained(target)
        else:
            for f in ADAPTER_FILES:
                shutil.copy2(source / f, target / f)
        (target / "README.md").write_text(model_card(cfg, summary, name, spec, merge), encoding="utf-8")
        written.append(target)
    return written


def merged_model(spec: str, adapter: Path) -> torch.nn.Module:
    """The base model (fp32, CPU) with the adapter's LoRA product added into its weights."""
    from peft import PeftModel

    base = load_causal_lm(spec, torch.float32, torch.device("cpu"))
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def _selection_text(sel) -> str:
    text = f"`{sel.source}`"
    if sel.path is not None:
        text += f" `{sel.path}`" + (f" ({sel.subset}, split {sel.split})" if sel.source == "hf" else "")
    if sel.categories:
        text += f", categories {', '.join(sel.categories)}"
    return text


def model_card(cfg: RunConfig, summary: dict, client: str, spec: str, merged: bool) -> str:
    """README.md of an export: Hugging Face metadata, then where the weights came from and what was measured."""
    s, embedded = cfg.client_settings(client), spec in EMBEDDED_MODELS
    own = next((c.data for c in cfg.clients if c.name == client and c.data is not None), None)
    domains = {c.data.domain: c.data for c in cfg.clients if c.data is not None}
    partition = cfg.data.partition if isinstance(cfg.data.partition, str) else cfg.data.partition.partitioner
    rounds = f"{cfg.rounds} communication round{'s' if cfg.rounds != 1 else ''}"
    base = f"- **Base model:** `{spec}`"
    if embedded:
        base += (f"; semcon's embedded model, dequantized from the GGUF in `{EMBEDDED_MODELS[spec].parts[0][0]}`: "
                 "its weights are not the hub release's, so load the adapter on this base, or export with `--merge`")
    facts = [
        base,
        f"- **Method:** `{summary.get('method', cfg.method)}`, {rounds} after a private-only round 0; "
        f"{len(cfg.clients)} clients, seed {cfg.seed}",
        f"- **This client's private data:** {_selection_text(own) if own else 'a share of the pooled domains'}"
        f" (partition `{partition}`)",
        "- **The federation's domains:** " + "; ".join(f"{d}: {_selection_text(sel)}" for d, sel in domains.items()),
        f"- **Public prompts per round:** {cfg.public.num_prompts}",
        f"- **LoRA:** r={s.lora.r}, alpha={s.lora.alpha}, targets {s.lora.target_modules}; {s.steps} steps of "
        f"{s.batch_size} examples per round, lr {s.lr}",
        f"- **Measured traffic of the whole run:** {summary.get('bytes_up', 0):,} B up, "
        f"{summary.get('bytes_down', 0):,} B down (all clients, all rounds)",
    ]
    quality = [f"| {d} | {m.get('bpb', float('nan')):.4f} | {m.get('nll', float('nan')):.4f} |"
               for d, m in sorted(summary.get("eval_after", {}).get(client, {}).items())]
    if merged:
        use = ["from transformers import AutoModelForCausalLM", 'model = AutoModelForCausalLM.from_pretrained("DIR")']
        lm_eval = "lm_eval --model hf --model_args pretrained=DIR --tasks mmlu"
    else:  # an embedded base lives in semcon's cache, wherever that is on the reader's machine
        where = f'resolve_model("{spec}")' if embedded else f'"{spec}"'
        use = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
               *(["from semcon.assets import resolve_model"] if embedded else []),
               f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({where}), "DIR")']
        pretrained = f"$(python -c 'from semcon.assets import resolve_model; print({where})')" if embedded else spec
        lm_eval = f"lm_eval --model hf --model_args pretrained={pretrained},peft=DIR --tasks mmlu"
    kind = "adapter merged into the base model" if merged else "LoRA adapter"
    return "\n".join([
        "---", *([] if merged else ["library_name: peft"]), *([] if embedded else [f"base_model: {spec}"]),
        f"semcon_base_model: {spec}",
        "tags: [semcon, federated-learning, lora, semantic-consensus]", "---", "",
        f"# {cfg.name}: client `{client}` ({kind})", "",
        f"Fine-tuned with semcon {version('semcon')}: federated fine-tuning by semantic consensus, in which clients "
        "share answers to public prompts, never weights.", "",
        *facts, "",
        "## Held-out quality after the federation (semcon's evaluation)", "",
        "| domain | bits per byte | NLL per token |", "|---|---|---|", *quality, "",
        "## Use", "", "```python", *use, "```", "",
        f"Evaluate with lm-evaluation-harness (DIR is this directory): `{lm_eval}`", "",
    ])


def exported_base(directory: Path) -> str | None:
    """The base model an exported adapter was trained on, as its model card names it (``semcon_base_model``)."""
    card = Path(directory) / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if not text.startswith("---\n") or text.count("---\n") < 2:
        return None
    meta = yaml.safe_load(text.split("---\n", 2)[1]) or {}
    return meta.get("semcon_base_model") if isinstance(meta, dict) else None


def evaluate_export(directory: Path, data: Path, model: str | None = None, items: int = 32
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """An exported adapter (and, for comparison, its base model without it) or a merged model, scored on a JSONL
    file of held-out rows as semcon scores its own evaluation sets: bits per byte, and with ``items`` > 0 the
    generation metrics of that many rows' greedy answers. ``model``: the base, where the card does not name it.
    Returns ``{"base" | "adapter" | "merged": {domain: {metric: value}}}``."""
    from semcon.config import DataSelection, EvalConfig
    from semcon.data import load_selection
    from semcon.embed import Embedder
    from semcon.member.evaluate import evaluate_client
    from semcon.member.models import ChatFormat

    directory, cpu = Path(directory), torch.device("cpu")
    is_adapter = all((directory / f).is_file() for f in ADAPTER_FILES)
    if not is_adapter and not (directory / "config.json").is_file():
        raise ExportError(f"{directory}: neither an exported adapter ({', '.join(ADAPTER_FILES)}) nor a merged model "
                          "(config.json)")
    spec = (model or exported_base(directory)) if is_adapter else str(directory)
    if spec is None:
        raise ExportError(f"{directory}: its model card names no base model: give --model")
    rows = load_selection(DataSelection(source="jsonl", path=Path(data), name=Path(data).stem), 10**9)
    fmt, cfg = ChatFormat(load_tokenizer(spec)), EvalConfig(generate=items > 0, generate_items=items, before=False)
    base = load_causal_lm(spec, torch.float32, cpu)

    def scores(m) -> dict[str, dict[str, float]]:
        return evaluate_client(m, fmt, {rows[0].domain: rows}, cfg, embed=Embedder("all-minilm-l6-v2"),
                               gen_batch_size=64, device=cpu, dtype=torch.float32)

    if not is_adapter:
        return {"merged": scores(base)}
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, str(directory)).eval()
    with tuned.disable_adapter():
        before = scores(tuned)
    return {"base": before, "adapter": scores(tuned)}
