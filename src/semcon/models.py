"""Load causal LMs, format prompts with each model's own chat template, and hold clients' LoRA adapters.

Clients that use the same base model share one copy of its frozen weights: each client is a named
peft adapter on that copy, activated for its phase.
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from semcon.assets import resolve_model
from semcon.config import LoraConfig
from semcon.names import child

log = logging.getLogger(__name__)

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


@cache
def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast when the base weights are bf16, so fp32 LoRA matmuls also run in bf16."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it natively (``auto``), else fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    return torch.bfloat16 if native else torch.float32


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, dtype: torch.dtype, device: torch.device):
    """A frozen base model in ``dtype`` on ``device`` (embedded name, local dir or hub id)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(spec), dtype=dtype)
    model.requires_grad_(False)
    return model.to(device).eval()


class ChatFormat:
    """Turns (instruction, response) into token ids with the model's own chat template.

    Models without a chat template (base models such as Gemma-3-270M) get ``PLAIN_TEMPLATE`` and the
    tokenizer's own special tokens (``<bos>``).
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_text(self, instruction: str) -> str:
        if self.has_template:
            msgs = [{"role": "user", "content": instruction}]
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return PLAIN_TEMPLATE.format(instruction=instruction)

    def response_text(self, instruction: str, response: str) -> str:
        """What follows the prompt in a full conversation, end-of-turn marker included."""
        if self.has_template:
            msgs = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
            full = self.tok.apply_chat_template(msgs, tokenize=False)
            prompt = self.prompt_text(instruction)
            if full.startswith(prompt):
                return full[len(prompt):]
        return response + (self.tok.eos_token or "")

    def prompt_ids(self, instruction: str) -> list[int]:
        # Chat templates write their own special tokens; plain prompts need the tokenizer's (<bos>).
        return self.tok(self.prompt_text(instruction), add_special_tokens=not self.has_template)["input_ids"]

    def content_text(self, instruction: str, response: str) -> str:
        """What follows the prompt up to the end of the response itself, without the end-of-turn marker
        (for an answer that was cut, and for bits per byte of the reference text)."""
        full, body = self.response_text(instruction, response), response.strip()
        at = full.rfind(body)
        return full[:at + len(body)] if body and at >= 0 else response

    def example_ids(self, instruction: str, response: str, max_length: int | None = None, *, end: bool = True,
                    truncate: str = "drop") -> tuple[list[int], list[int]] | None:
        """Token ids and labels (prompt masked to -100); ``end``: the response ends with the end-of-turn marker.

        An example longer than ``max_length`` is None with ``truncate="drop"``; with ``"response"`` it keeps
        its whole prompt and loses the response's tail (None when not one response token fits).
        """
        prompt = self.prompt_ids(instruction)
        text = self.response_text(instruction, response) if end else self.content_text(instruction, response)
        answer = self.tok(text, add_special_tokens=False)["input_ids"]
        if max_length is not None and len(prompt) + len(answer) > max_length:
            if truncate != "response" or len(prompt) >= max_length:
                return None
            answer = answer[:max_length - len(prompt)]
        return prompt + answer, [-100] * len(prompt) + answer

    def eos_ids(self) -> set[int]:
        ids = {self.tok.eos_token_id}
        end = self.tok.convert_tokens_to_ids("<|im_end|>") if self.has_template else None
        if isinstance(end, int) and end != self.tok.unk_token_id:
            ids.add(end)
        return {i for i in ids if i is not None}


class Backbone:
    """One base model shared by all clients that use it; each client owns a named LoRA adapter on it.

    When the pool cannot keep every base model resident, the weights are loaded for a phase and
    released after it; the adapters are kept as CPU tensors meanwhile and restored on the next load.
    """

    def __init__(self, spec: str, dtype: torch.dtype, device: torch.device, pool: BackbonePool | None = None):
        self.spec, self.dtype, self.device, self.pool = spec, dtype, device, pool
        self.tokenizer = load_tokenizer(spec)
        self._model: torch.nn.Module | None = None  # a peft PeftModel once the first adapter exists
        self._lora: dict[str, LoraConfig] = {}
        self._parked: dict[str, dict[str, torch.Tensor]] = {}  # adapter states while the base is released

    @classmethod
    def load(cls, spec: str, dtype: torch.dtype, device: torch.device) -> Backbone:
        backbone = cls(spec, dtype, device)
        backbone.model  # noqa: B018 - load now
        return backbone

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            if self.pool is not None:
                self.pool.make_room(self)
            self._model = load_causal_lm(self.spec, self.dtype, self.device)
            for name, lora in self._lora.items():
                self._attach(name, lora)
                self.load_adapter_state(name, self._parked.pop(name))
        return self._model

    def release(self) -> None:
        """Free the base weights, parking the adapters on the CPU."""
        if self._model is None:
            return
        self._parked = {n: {k: v.detach().cpu().clone() for k, v in self.adapter_state(n).items()} for n in self._lora}
        self._model = None
        gc.collect()

    @property
    def fmt(self) -> ChatFormat:
        return ChatFormat(self.tokenizer)

    @property
    def adapters(self) -> list[str]:
        return list(self._lora)

    def add_adapter(self, name: str, lora: LoraConfig, seed: int) -> None:
        """A fresh fp32 LoRA adapter named ``name`` (B=0, so it starts as the base model)."""
        torch.manual_seed(seed)
        self._attach(name, lora)
        self._lora[name] = lora

    def _attach(self, name: str, lora: LoraConfig) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules, task_type="CAUSAL_LM")
        if hasattr(self.model, "peft_config"):
            self.model.add_adapter(name, config)
        else:
            self._model = get_peft_model(self.model, config, adapter_name=name, autocast_adapter_dtype=False)
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if isinstance(module, LoraLayer):  # the adapter's own weights, found by structure, stay fp32
                for part in (module.lora_A, module.lora_B, module.lora_embedding_A, module.lora_embedding_B):
                    if name in part:
                        item = part[name]  # a Linear (or an embedding's Parameter)
                        for p in item.parameters() if isinstance(item, torch.nn.Module) else [item]:
                            p.data = p.data.float()
            # Every forward runs under autocast in the base dtype, so peft's cast of each layer input to the
            # fp32 adapter dtype would only add a copy per layer.
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
        self.model.to(self.device)

    @contextmanager
    def active(self, name: str | None):
        """Run with the adapter ``name`` active, or with no adapter (the base model) for ``None``."""
        model = self.model
        if name is None:
            if self.adapters:
                with model.disable_adapter():
                    yield model
            else:
                yield model
            return
        model.set_adapter(name)
        yield model

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        if self._model is None:
            return self._parked[name]
        return get_peft_model_state_dict(self._model, adapter_name=name)

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state, adapter_name=name)

    def save_adapter(self, name: str, directory: Path) -> Path:
        """Save adapter ``name`` as ``directory/name`` (peft's layout for named adapters)."""
        path = child(directory, name, "adapter name")
        self.model.save_pretrained(str(directory), selected_adapters=[name])
        return path


def weight_bytes(spec: str, dtype: torch.dtype) -> int | None:
    """Bytes the base weights take in ``dtype``, from the local safetensors (None when unknown)."""
    from semcon.assets import EMBEDDED_MODELS

    path = Path(resolve_model(spec)) if spec in EMBEDDED_MODELS or Path(spec).is_dir() else None
    files = list(path.glob("*.safetensors")) if path else []
    if not files:
        return None
    stored = sum(f.stat().st_size for f in files)  # the cache holds fp32; other dirs may hold bf16
    return int(stored * torch.finfo(dtype).bits / 32) if spec in EMBEDDED_MODELS else stored


class BackbonePool:
    """The distinct base models of a run. All stay resident when their weights fit the memory budget;
    otherwise only one is loaded at a time (clients run their phases one after another)."""

    def __init__(self, specs: list[str], dtype: torch.dtype, device: torch.device, policy: str = "auto",
                 budget_gb: float | None = None):
        import psutil

        self.backbones = {s: Backbone(s, dtype, device, pool=self) for s in dict.fromkeys(specs)}
        sizes = [weight_bytes(s, dtype) for s in self.backbones]
        budget = (budget_gb * 2**30) if budget_gb else 0.5 * psutil.virtual_memory().total
        self.resident = policy == "all" or (policy == "auto" and all(x is not None for x in sizes)
                                            and sum(sizes) <= budget)
        log.info("base models %s: %s", ", ".join(self.backbones),
                 "all resident" if self.resident else "loaded one at a time")

    def __getitem__(self, spec: str) -> Backbone:
        return self.backbones[spec]

    def make_room(self, incoming: Backbone) -> None:
        if not self.resident:
            for b in self.backbones.values():
                if b is not incoming:
                    b.release()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
