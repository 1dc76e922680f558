"""Load causal LMs, format prompts with each model's own chat template, and hold clients' LoRA adapters.

Clients that use the same base model share one copy of its frozen weights; each client's LoRA adapter
is lent one of a few peft adapter slots on that copy while it works (``Backbone``).
"""

from __future__ import annotations

import copy
import gc
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from semcon.assets import resolve_model
from semcon.config import LoraConfig
from semcon.names import child

log = logging.getLogger(__name__)

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_STOP = "\n### "  # a base model that writes the template's next heading has ended its answer


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


@lru_cache(maxsize=16)
def load_tokenizer(spec: str):
    """The model's tokenizer, read once per process: a compare's runs and a run's clients share the object,
    so callers must not change it (deep-copy it first)."""
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
    tokenizer's own special tokens (``<bos>``), and their answers also end at ``PLAIN_STOP`` (``stop``), as
    lm-evaluation-harness's ``until`` ends a base model's: such a model rarely writes an end-of-text token.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.stop: str | None = None if self.has_template else PLAIN_STOP

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
    """One base model shared by all clients that use it; each client owns a LoRA adapter on it.

    The peft model holds a few adapter *slots*, not one adapter per client: peft's ``add_adapter`` and
    ``set_adapter`` walk every module, and every adapter adds modules, so one named adapter per client made
    building a hundred clients take minutes (quadratic) and each switch take a second. A client's weights sit
    in a slot while it works and as CPU tensors otherwise; a client that never trained has none (its seed
    recreates them). When the pool cannot keep every base model resident, the weights are loaded for a
    phase and released after it.
    """

    max_slots = 16  # adapters held at once per LoRA config: the most clients in one mixed batch

    def __init__(self, spec: str, dtype: torch.dtype, device: torch.device, pool: BackbonePool | None = None):
        self.spec, self.dtype, self.device, self.pool = spec, dtype, device, pool
        self.tokenizer = load_tokenizer(spec)
        self._model: torch.nn.Module | None = None  # a peft PeftModel once the first slot exists
        self._lora: dict[str, LoraConfig] = {}  # client -> its LoRA config
        self._seed: dict[str, int] = {}  # client -> the seed of its fresh adapter
        self._stored: dict[str, dict[str, torch.Tensor]] = {}  # weights of clients not in a slot (none: fresh)
        self._slots: dict[str, _Slot] = {}  # peft adapter name -> slot
        self._uses = 0

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
        return self._model

    def release(self) -> None:
        """Free the base weights; the clients' adapters stay as CPU tensors."""
        for slot in self._slots.values():
            self._vacate(slot)
        self._model, self._slots = None, {}
        gc.collect()

    @property
    def fmt(self) -> ChatFormat:
        return ChatFormat(self.tokenizer)

    @property
    def adapters(self) -> list[str]:
        return list(self._lora)

    def add_adapter(self, name: str, lora: LoraConfig, seed: int) -> None:
        """A fresh LoRA adapter named ``name`` (B=0, so it starts as the base model; A drawn from ``seed``).
        Nothing is built until the client first works."""
        self._lora[name], self._seed[name] = lora, seed

    def hold(self, names: list[str]) -> list[str]:
        """Put these clients' adapters in slots (the least recently used others leave theirs); their peft names."""
        held = {s.client: s for s in self._slots.values() if s.client is not None}
        for name in names:
            if name not in held:
                held[name] = self._place(name, keep=set(names))
            self._uses += 1
            held[name].used = self._uses
        return [held[n].name for n in names]

    def _place(self, name: str, keep: set[str]) -> _Slot:
        lora = self._lora[name]
        free = [s for s in self._slots.values() if s.lora == lora and s.client not in keep]
        if free:  # as few slots as the largest request needs: a swap copies two small adapters
            slot = min(free, key=lambda s: (s.client is not None, s.used))
            self._vacate(slot)
        elif sum(s.lora == lora for s in self._slots.values()) < self.max_slots:
            slot = self._new_slot(lora)
        else:
            raise ValueError(f"more than {self.max_slots} adapters asked for at once on {self.spec}")
        stored = self._stored.pop(name, None)
        with torch.no_grad():
            if stored is None:  # fresh: peft's own init, drawn from the client's seed
                torch.manual_seed(self._seed[name])
                for module in slot.layers:
                    module.reset_lora_parameters(slot.name, init_lora_weights=True)
            else:
                _copy_into(slot.params, stored, f"adapter of client {name!r}")
        slot.client = name
        return slot

    def _vacate(self, slot: _Slot) -> None:
        if slot.client is not None:
            self._stored[slot.client] = {k: p.detach().to("cpu", copy=True) for k, p in slot.params.items()}
            slot.client = None

    def _new_slot(self, lora: LoraConfig) -> _Slot:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
        from peft.tuners.lora import LoraLayer

        name = f"slot{len(self._slots)}"
        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules, task_type="CAUSAL_LM")
        sibling = next((s for s in self._slots.values() if s.lora == lora), None)
        if sibling is not None:  # the same layers as a slot of this config: no walk over every module (peft's)
            config = copy.deepcopy(self.model.peft_config[sibling.name])
            self.model.peft_config[name] = config
            for module in sibling.layers:
                module.update_layer(name, config.r, lora_alpha=config.lora_alpha, config=config)
        elif hasattr(self.model, "peft_config"):
            self.model.add_adapter(name, config)
        else:
            self._model = get_peft_model(self.model, config, adapter_name=name, autocast_adapter_dtype=False)
        layers = []
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                # Every forward runs under autocast in the base dtype, so peft's cast of each layer input to the
                # fp32 adapter dtype would only add a copy per layer.
                module.cast_input_dtype_enabled = False
                if name in module.lora_A or name in module.lora_embedding_A:
                    layers.append(module)
        # The slot's own weights, found by exact name segment (a base weight may be called like a client), in
        # peft's state-dict keys (the adapter's segment removed), kept fp32.
        params = {}
        for key, p in self.model.named_parameters():
            parts = key.split(".")
            if name in parts and any(part.startswith("lora_") for part in parts):
                p.data = p.data.float()
                parts.remove(name)
                params[".".join(parts)] = p
        slot = self._slots[name] = _Slot(name, lora, layers, params)
        return slot

    @contextmanager
    def active(self, name: str | None):
        """Run with the adapter of client ``name`` active, or with no adapter (the base model) for ``None``."""
        model = self.model
        if name is None:
            if hasattr(model, "peft_config"):
                with model.disable_adapter():
                    yield model
            else:
                yield model
            return
        slot = self.hold([name])[0]
        self.model.set_adapter(slot)
        yield self.model

    def adds_nothing(self, name: str) -> bool:
        """Whether the adapter is still the identity (every LoRA B zero, as before any training)."""
        held = next((s for s in self._slots.values() if s.client == name), None)
        if held is None and name not in self._stored:
            return True  # fresh
        state = held.params if held else self._stored[name]
        return all(not v.any() for k, v in state.items() if "lora_B" in k or "lora_embedding_B" in k)

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """A snapshot of the client's adapter weights, by peft's state-dict keys."""
        if name in self._stored:
            return dict(self._stored[name])
        slot = self._slots[self.hold([name])[0]]
        return {k: p.detach().clone() for k, p in slot.params.items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        slot = self._slots[self.hold([name])[0]]
        with torch.no_grad():
            _copy_into(slot.params, state, f"adapter of client {name!r}")

    def save_adapter(self, name: str, directory: Path) -> Path:
        """Save client ``name``'s adapter as ``directory/name`` in peft's layout (``PeftModel.from_pretrained``)."""
        from safetensors.torch import save_file

        path = child(directory, name, "adapter name")
        slot = self.hold([name])[0]
        config = copy.copy(self.model.peft_config[slot])
        config.inference_mode = True
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(path))
        save_file({k: v.contiguous() for k, v in self.adapter_state(name).items()},
                  str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        return path


@dataclass
class _Slot:
    """One peft adapter of the shared model, lent to one client at a time."""

    name: str
    lora: LoraConfig
    layers: list  # the LoRA layers that have this adapter
    params: dict[str, torch.nn.Parameter]  # peft state-dict key -> the slot's weight
    client: str | None = None
    used: int = 0


def _copy_into(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor], what: str) -> None:
    if state.keys() != params.keys():
        missing, extra = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
        raise ValueError(f"{what}: tensors do not match its LoRA config (missing {missing[:2]}, unexpected {extra[:2]})")
    for key, p in params.items():
        if state[key].shape != p.shape:
            raise ValueError(f"{what}: {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}")
        p.copy_(state[key])


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
