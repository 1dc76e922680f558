"""The run configuration: one validated pydantic model, loaded from YAML plus dotted ``key=value`` overrides.

A run is fully described by its resolved config: ``semcon run RUN_DIR/config.yaml`` repeats it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from semcon.assets import model_problem
from semcon.consensus import REFERENCE_BOUND, RULES, load_rule, rule_inputs
from semcon.names import check_name, repeated_ignoring_case

Method = Literal["semantic_consensus", "fedavg", "fedprox", "local", "centralized"]
METHODS: tuple[str, ...] = ("semantic_consensus", "fedavg", "fedprox", "local", "centralized")
LOCAL_PLUS = "local+"  # local with as many extra private steps as additive's label steps (compare and ablate)
Source = Literal["wiki", "gsm8k", "chatterbot", "mmlu", "humaneval", "jsonl", "hf"]
FILE_SOURCES = ("jsonl", "hf")  # sources whose rows come from the user's path
Precision = Literal["auto", "fp32", "bf16"]


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Who reads a setting, and so from when it can change a run. Every field not marked is read by the members from
# round 0 on; the marked ones act later, which is what lets runs that differ only in them share their start
# (``config_key``; ``semcon ablate`` forks a cell from another's round 0 and round-1 answers).
MEMBER = "member"  # a member, from round 0 on (the default)
UPLOADS = "member uploads"  # a member, on what it uploads only (from round 1's answers on)
LABELS = "member labels"  # a member, on the pseudo-labels it trains on only (from round 1's training on)
SERVER = "server"  # the coordinator alone, on the answers it receives


def read_by(reader: str) -> dict:
    """``Field`` keywords that declare the setting's reader."""
    return {"json_schema_extra": {"reader": reader}}


def reader(section: type[BaseModel], name: str) -> str:
    """The declared reader of ``section.name`` (``MEMBER`` where none is declared)."""
    return (section.model_fields[name].json_schema_extra or {}).get("reader", MEMBER)


class DataSelection(Strict):
    """One domain: rows of one source, optionally restricted to some of its categories."""

    source: Source = Field(description="wiki | gsm8k | chatterbot | mmlu | humaneval | jsonl | hf")
    categories: list[str] | None = Field(None, description="keep only these categories (wiki topics, "
                                         "chatterbot files, MMLU subjects, values of an hf data set's category column)")
    path: Path | None = Field(None, description="jsonl: a JSONL file with instruction, response[, category]; hf: a "
                              "Hugging Face hub name, a save_to_disk directory, or a json/jsonl/csv/parquet file")
    name: str | None = Field(None, description="domain label in reports; derived from source and categories")
    # source: hf only. The data set's own config name is `subset` here, as `name` already labels the domain.
    subset: str | None = Field(None, description="hf: the data set's config (load_dataset's `name`), e.g. 'main'")
    split: str = Field("train", description="hf: the split to read")
    eval_split: str | None = Field(None, description="hf: the split the evaluation rows come from (e.g. 'test'); "
                                   "default: carved from `split` like the other sources")
    instruction: str = Field("instruction", description="hf: the column of instructions")
    response: str = Field("response", description="hf: the column of responses")
    category: str | None = Field(None, description="hf: the column of categories (default: one category)")
    task: Literal["generative", "numeric"] = Field(
        "generative", description="hf: the metrics of every row; numeric: GSM8K-style exact match of the final number")

    @model_validator(mode="after")
    def _check(self) -> DataSelection:
        if self.source in FILE_SOURCES and self.path is None:
            raise ValueError(f"source {self.source!r} needs 'path'")
        if self.source not in FILE_SOURCES and self.path is not None:
            raise ValueError(f"'path' only applies to sources {' and '.join(FILE_SOURCES)}, not {self.source!r}")
        if self.source != "hf" and (hf_keys := [k for k in HF_ONLY if getattr(self, k) != type(self).model_fields[k].default]):
            raise ValueError(f"{', '.join(map(repr, hf_keys))} only appl{'ies' if len(hf_keys) == 1 else 'y'} "
                             "to source 'hf'")
        return self

    @property
    def domain(self) -> str:
        if self.name:
            return self.name
        if self.source in FILE_SOURCES:
            stem = Path(self.path).stem
            return stem + (f"-{self.subset}" if self.subset else "")
        return self.source + (":" + "+".join(self.categories) if self.categories else "")


HF_ONLY = ("subset", "split", "eval_split", "instruction", "response", "category", "task")  # keys of source hf alone


class LoraConfig(Strict):
    r: int = Field(16, gt=0, description="LoRA rank: adapter parameters grow linearly with it")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="0 by default: on CPU the dropout masks cost ~20% of a step")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")


OFF_TOPIC = "The mitochondria is the powerhouse of the cell, and bananas are berries."


AttackKind = Literal["random", "echo", "constant", "off_topic", "plausible_wrong", "sybil", "inflate_competence",
                     "expert_liar", "claim_finished"]


class AttackConfig(Strict):
    """An adversarial member, for robustness studies: it acts on that client's upload only (it still trains and
    is evaluated as any client); see ``attacks.py``."""

    kind: AttackKind = Field(description="random: random words of its own answer's length; echo: the prompt; "
                             "constant: `text` for every prompt; off_topic: a fluent text of another question (one of "
                             "its own private responses, at random); plausible_wrong: its own answer with numbers "
                             "and names changed; sybil: the members of a group all upload their group's `text` (with "
                             "`target`, there only, claiming the highest competence); inflate_competence: the highest "
                             "competence on its targeted prompts; expert_liar: plausible_wrong on its own domain's "
                             "prompts, where its honest competence is high; claim_finished: its own answers, every one "
                             "claimed finished (a cut answer becomes a candidate)")
    answers: Literal["honest", "constant"] = Field(
        "honest", description="inflate_competence: its own answers, or `text` for every prompt")
    text: str = Field(OFF_TOPIC, min_length=1, description="the fixed text of constant (and of answers: constant)")
    group: str = Field("sybil", min_length=1, description="sybil: the group's name; its members send the same "
                       "`text`, so two groups of sybils are two `text`s")
    poison_private: bool = Field(False, description="also train on wrong private data (each response swapped "
                                 "with another example's)")
    target: str | None = Field(None, description="the prompts it attacks: a public prompt's domain, `own` (the "
                               "domain of most of its private rows) or `next` (the domain after its own among the "
                               "round's, in sorted order: another member's); elsewhere it uploads honestly. Default: "
                               "every prompt (expert_liar: `own`). On Flower a member sees no prompt's domain: use "
                               "`share`")
    share: float | None = Field(None, gt=0, le=1, description="of the targeted prompts, the fraction it attacks, "
                                "drawn each round by the attacker (a rank budget: claiming top competence on at most "
                                "1 - gate of the prompts passes a rank-normalized gate there)")
    part: str | None = Field(None, pattern=r"^[1-9][0-9]*/[1-9][0-9]*$", description="sybil: `i/k`, this member "
                             "takes part i of k of the targeted prompts, so that k members split them and each stays "
                             "inside its rank budget")
    confidence: Literal["max", "honest"] | None = Field(None, description="the confidence it reports where it "
                                                        "attacks: max (0, certain) or its own; default: max where "
                                                        "it rewrites the answer, its own otherwise")

    @model_validator(mode="after")
    def _answers_apply(self) -> AttackConfig:
        if self.answers != "honest" and self.kind != "inflate_competence":
            raise ValueError(f"answers: {self.answers} applies to kind inflate_competence only, not {self.kind}")
        if self.part is not None and (self.kind != "sybil" or int(self.part.split("/")[0]) > int(self.part.split("/")[1])):
            raise ValueError(f"part: {self.part} is i/k with i <= k, for kind sybil only")
        return self


class Adversaries(AttackConfig):
    """The same attack for the last ``count`` clients (a client's own ``attack`` wins): one key to sweep the
    number of attackers with ``semcon ablate --grid adversaries.count=0,1,2``."""

    count: int = Field(1, ge=0, description="how many clients attack: the last ones in config order")
    rotate: bool = Field(False, description="move the attackers back one client per seed (wrapping): seed s attacks "
                         "with the `count` clients ending s before the last, so that over seeds every domain's member "
                         "attacks and 'with attackers' does not always mean 'without that domain's expert'")


class ClientConfig(Strict):
    name: str = Field(description="unique client name (1-64 of A-Z a-z 0-9 _ -, unique ignoring case); it names "
                      "its adapter, its folders and its rows in every file")
    model: str = Field("smollm2-135m", description="embedded name (smollm2-135m, gemma3-270m, qwen2.5-0.5b), "
                       "Hugging Face id or local directory")
    data: DataSelection | None = Field(None, description="this client's private domain (partition=category)")
    num_examples: int | None = Field(None, gt=0, description="private examples (default data.examples_per_client)")
    # Per-client training and generation settings; unset means the run-wide value.
    lora: LoraConfig | None = Field(None, description="this client's LoRA rank and targets (default train.lora)")
    lr: float | None = Field(None, gt=0, description="default train.lr")
    batch_size: int | None = Field(None, gt=0, description="default train.batch_size")
    max_new_tokens: int | None = Field(None, gt=0, description="default generate.max_new_tokens")
    attack: AttackConfig | None = Field(None, description="make this client an adversarial member (see AttackConfig)")

    _safe_name = field_validator("name")(lambda name: check_name(name, "client name"))


class ClientTemplate(ClientConfig):
    """Many clients declared once: ``count`` clients named by ``name`` (a pattern with ``{i}``), each with
    the template's settings and the ``data`` selections in turn (a list spreads them over domains)."""

    count: int = Field(gt=0, le=100_000, description="how many clients")
    name: str = Field("c{i:03d}", description="name pattern, formatted with i = 0, 1, ... (e.g. org{i:03d})")
    data: DataSelection | list[DataSelection] | None = Field(
        None, description="one selection, or a list the clients take in turn (client i gets data[i % len])")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:  # replaces ClientConfig's check: here the name is a pattern
        try:
            if "{i" not in name or name.format(i=0) == name.format(i=1):
                raise ValueError
        except (ValueError, IndexError, KeyError):
            raise ValueError(f"must contain {{i}}, as in c{{i:03d}}, not {name!r}") from None
        check_name(name.format(i=0), "client name")
        return name

    def expand(self) -> list[ClientConfig]:
        fields = self.model_dump(exclude={"count", "name", "data"}, exclude_unset=True)
        data = self.data if isinstance(self.data, list) else [self.data]
        return [ClientConfig(**fields, name=self.name.format(i=i),
                             data=data[i % len(data)] and data[i % len(data)].model_copy())
                for i in range(self.count)]


def _clients_kind(value: Any) -> str:
    return "template" if isinstance(value, dict | ClientTemplate) else "list"


def _partition_kind(value: Any) -> str:
    return "flower" if isinstance(value, dict | FlowerPartition) else "own"


UNION_TAGS = ("list", "template", "own", "flower")  # left out of error locations


class FlowerPartition(Strict):
    """A partitioner of Flower Datasets (flwr-datasets) over the pooled private rows, instead of semcon's own."""

    partitioner: Literal["iid", "dirichlet", "natural_id"] = Field(
        description="iid: equal contiguous shards of the shuffled pool; dirichlet: per group, Dirichlet(alpha) "
        "shares; natural_id: one partition per group (as many groups as clients)")
    by: Literal["category", "domain"] = Field(
        "category", description="the groups: a domain's categories (wiki topics, MMLU subjects, ...) or whole domains")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration")
    min_partition_size: int = Field(0, ge=0, description="dirichlet: resample until every client has this many rows")


class DataConfig(Strict):
    partition: Annotated[Annotated[Literal["category", "iid", "dirichlet"], Tag("own")]
                         | Annotated[FlowerPartition, Tag("flower")], Discriminator(_partition_kind)] = Field(
        "category", description="category: each client its own domain; iid/dirichlet: split the pooled domains "
        "(semcon's own); {partitioner: iid|dirichlet|natural_id, by: category|domain, alpha}: Flower Datasets'")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition=dirichlet)")
    examples_per_client: int = Field(64, gt=0, description="private training examples per client")
    eval_per_domain: int = Field(16, ge=0, description="held-out evaluation examples per domain")
    split_seed: int = Field(0, description="seed of the evaluation sets and public prompts; the run's `seed` "
                            "draws the private rows, so runs with different seeds are evaluated on the same items")
    max_chars: int = Field(2000, gt=0, description="drop rows whose instruction+response is longer")


class PublicConfig(Strict):
    num_prompts: int = Field(32, gt=0, description="public prompts answered by every client each round")
    pool: int | None = Field(None, gt=0, description="prompts carved from the clients' domains before their private "
                             "rows, of which a run takes the first `num_prompts` (each round's under `per_round: "
                             "fresh`), so that private and evaluation rows are the same at every budget; default: "
                             "as many from each domain as the domain that can spare fewest has left after its "
                             "evaluation and private rows (the embedded sources with 100 eval and 64 private rows "
                             "per domain: 584 per domain, chatterbot binds, 2,336 in all). Runs from before this key "
                             "existed drew `num_prompts`: `--set public.pool=NUM_PROMPTS` reproduces them")
    per_round: Literal["fixed", "fresh"] = Field("fixed", description="fixed: the same prompts every round; fresh: "
                                                 "round t answers the pool's t-th block of `num_prompts`")
    path: Path | None = Field(None, description="JSONL of public prompts (instruction[, id]); default: "
                              "held out from the clients' domains, responses dropped")
    data: DataSelection | None = Field(None, description="public prompts from a data set of their own (any source, "
                                       "e.g. {source: hf, ...}), drawn by data.split_seed; its responses stay "
                                       "with the server as references")

    @model_validator(mode="after")
    def _one_source(self) -> PublicConfig:
        if self.path is not None and self.data is not None:
            raise ValueError("give 'path' or 'data', not both")
        return self

    @property
    def own(self) -> bool:
        """Whether the prompts come from a set of their own rather than from the clients' domains."""
        return self.path is not None or self.data is not None

    def drawn(self, rounds: int) -> int:
        """How many prompts a run of ``rounds`` rounds answers in all."""
        return self.num_prompts * (rounds if self.per_round == "fresh" else 1)

    def asked(self, prompts: list, t: int) -> list:
        """The prompts of round ``t`` (1, 2, ...) out of the run's ``prompts`` (in pool order)."""
        if self.per_round == "fixed":
            return prompts[:self.num_prompts]
        return prompts[(t - 1) * self.num_prompts:t * self.num_prompts]


class TrainConfig(Strict):
    steps: int = Field(8, ge=0, description="optimizer steps per client per round")
    batch_size: int = Field(8, gt=0, description="examples per optimizer step (private rows and pseudo-labels mixed)")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the LoRA weights")
    max_length: int = Field(512, gt=8, description="tokens per example (prompt + response); see truncate")
    truncate: Literal["drop", "response"] = Field(
        "drop", description="an example longer than max_length: drop it (counted per client as dropped_too_long), "
        "or keep its whole prompt and cut the response's tail; the prompt's head is never cut")
    schedule: Literal["mixed", "additive"] = Field(
        "mixed", description="mixed: each round's `steps` draw batches from private rows and pseudo-labels together, "
        "so labels take the place of private rows; additive: a client first runs exactly local's private schedule "
        "(same rows, batches and random stream), then `label_steps` over the labels it received alone")
    label_steps: int | None = Field(None, ge=0, description="additive: optimizer steps over the received labels "
                                    "(default: `label_epochs` passes over them, rounded up to whole batches)")
    label_epochs: float = Field(1.0, gt=0, description="additive, when label_steps is unset: passes over the labels")
    extra_steps: int = Field(0, ge=0, description="steps over the client's own private rows after the rest of its "
                             "round, from round 1 on (as label steps: round 0 has no labels): with method local, the "
                             "`local+` control for additive's label steps (as many more steps, without the labels)")
    micro_batch_tokens: int = Field(1024, gt=0, description="padded tokens per forward pass; a batch is "
                                    "accumulated over micro-batches, which bounds activation memory")
    pseudo_label_weight: float = Field(1.0, ge=0, description="loss weight λ of pseudo-labelled examples: "
                                       "the batch loss is Σ w·nll / Σ tokens")
    prox_mu: float = Field(0.01, ge=0, description="FedProx μ: weight of (μ/2)||w - w_global||² on the adapter")
    max_adapter_mb: float = Field(256.0, gt=0, description="fedavg/fedprox: adapter messages that decompress to "
                                  "more are refused before decoding (r=16 all-linear on SmolLM2-135M: 19 MB)")
    lora: LoraConfig = Field(LoraConfig(), description="every client's LoRA adapter unless its own `lora` says otherwise")


class GenerateConfig(Strict):
    max_new_tokens: int = Field(128, gt=0, description="the cap on each answer to a public prompt, in the client's "
                                "tokens; an answer cut there is flagged (see consensus.truncated)")
    batch_size: int = Field(64, gt=0, description="rows answered at once: a continuous batch over every row of "
                            "a phase (all clients on one base model x all prompts), refilled as rows end; the KV "
                            "cache holds this many rows")


Signal = Literal["knn", "gain"]
SIGNALS: tuple[str, ...] = ("knn", "gain")


class ConsensusConfig(Strict):
    rule: str = Field("medoid", description="medoid: argmax_i sum_j cos(e_i, e_j); weighted_medoid: each answer's "
                      "vote weighted by its client's competence; gated: the medoid among answers whose client "
                      "passes `gate`; oracle_expert / oracle_reference: measurement bounds (the domain expert's "
                      "answer / the held-back reference), refused on Flower; or your own rule as "
                      "package.module:function (docs/method.md)", **read_by(SERVER))
    threshold: float | None = Field(None, ge=-1, le=1,
                                    description="τ: no pseudo-label when the best mean similarity is below it", **read_by(SERVER))
    embedder: str = Field("all-minilm-l6-v2", description="sentence-transformers model (embedded name, id, dir)", **read_by(MEMBER))
    embed_batch_size: int = Field(64, gt=0, description="answers per batch of the server's embedder", **read_by(MEMBER))
    max_answer_chars: int = Field(4000, gt=0, description="uploads with a longer answer are rejected", **read_by(MEMBER))
    truncated: Literal["drop", "keep"] = Field(
        "drop", description="answers cut at max_new_tokens: drop (no candidate for a pseudo-label) or keep "
        "(then trained on without an end-of-turn token)", **read_by(SERVER))
    degenerate: Literal["drop", "keep"] = Field(
        "drop", description="answers that mostly repeat one n-gram (\"I'm sorry, I'm sorry, ...\"): drop or keep", **read_by(SERVER))
    competence: Literal["none"] | Signal | list[Signal] = Field(
        "none", validate_default=True, description="what every client computes from its own data and sends, one number in [0, 1] per "
        "answer and signal: knn (the prompt's similarity to its private instructions), gain (how much more its "
        "adapter than the base model likes its answer, per token); each calibrated against the client's own data", **read_by(MEMBER))
    signal: Signal | None = Field(None, description="the competence signal the rule uses (default: the first of "
                                  "`competence`)", **read_by(SERVER))
    competence_levels: int | None = Field(None, ge=2, le=1_000_000, description="quantize each competence to this "
                                          "many levels before it leaves the client (less of the data revealed)", **read_by(MEMBER))
    competence_norm: Literal["rank", "raw"] = Field(
        "rank", description="rank: the server compares each client's competence as its percentile rank over the "
        "round's prompts, so no client can claim every prompt (the bound against inflated competence); raw: as sent", **read_by(SERVER))
    knn_k: int = Field(5, gt=0, description="knn: mean cosine to this many nearest private instructions", **read_by(MEMBER))
    temperature: float = Field(0.1, gt=0, description="weighted_medoid: vote weights softmax(competence / T)", **read_by(SERVER))
    gate: float = Field(0.5, ge=0, le=1, description="gated: an answer is a candidate when its client's competence "
                        "is at least this (a percentile of the client's own calibration)", **read_by(SERVER))
    fallback: Literal["none", "medoid"] = Field(
        "none", description="gated and the oracles: a prompt with no eligible answer gets no label, or the medoid", **read_by(SERVER))
    support: float | None = Field(None, ge=-1, le=1, description="an answer is a candidate only when it agrees with "
                                  "at least one other client's answer at cosine >= this (a lone answer never wins)", **read_by(SERVER))
    skip_own: bool | None = Field(None, description="a client does not train on a pseudo-label that is its own "
                                  "answer (no extra bytes: it compares the label with what it sent); default: on for "
                                  "the rules that read competence, where an expert would otherwise retrain on its "
                                  "own answers, off for the others", **read_by(LABELS))
    reputation: float | None = Field(None, gt=0, description="defence: β of a per-client reputation carried "
                                     "across rounds (and checkpoints): each round a client's vote decays by "
                                     "exp(-β·d), d its distance to the consensus of the others beyond the closest "
                                     "client's (copies of its own answer left out); off by default", **read_by(SERVER))
    tie_break: Literal["confidence", "random"] = Field(
        "confidence", description="ties between different texts go to the more confident one (a number its client "
        "reports, so an attacker claims the most), or to a seeded random text (defence: trusts no reported number)",
        **read_by(SERVER))
    max_share: float | None = Field(None, gt=0, le=1, description="defence: no client supplies more than this share "
                                    "of a round's labels; beyond it, its least-ahead prompts go to the next eligible "
                                    "answer or get no label", **read_by(SERVER))
    corroborate: float | None = Field(None, ge=-1, le=1, description="defence: where more than one answer is "
                                      "eligible, an eligible answer needs another client's candidate at cosine >= "
                                      "this (a lone expert still wins where it alone is eligible)", **read_by(SERVER))
    sybil_merge: float | None = Field(None, ge=0, le=1, description="defence: answers of different clients at "
                                      "cosine >= this count as one voter (0.995: copies); honest clients on one base "
                                      "model that answer identically are merged too", **read_by(SERVER))

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value != REFERENCE_BOUND:
            load_rule(value)
        return value

    @field_validator("competence")
    @classmethod
    def _signals(cls, value: str | list[str]) -> list[str]:
        signals = [] if value == "none" else [value] if isinstance(value, str) else list(value)
        if repeated := sorted({s for s in signals if signals.count(s) > 1}):
            raise ValueError(f"signal {repeated[0]!r} is listed twice")
        return signals

    @model_validator(mode="after")
    def _rule_needs_signal(self) -> ConsensusConfig:
        if self.signal is not None and self.signal not in self.competence:
            raise ValueError(f"signal {self.signal!r} is not computed: add it to consensus.competence")
        arrays, settings = self.reads
        if unknown := [k for k in settings if k not in type(self).model_fields]:
            raise ValueError(f"rule {self.rule!r} reads setting {unknown[0]!r}, which is no consensus setting")
        if "competence" in arrays and not self.competence:
            raise ValueError(f"rule {self.rule!r} weighs answers by competence: set consensus.competence "
                             "(knn or gain)")
        if self.skip_own is None:
            self.skip_own = self.used_signal is not None
        return self

    @property
    def signals(self) -> list[str]:
        """The competence signals every client computes (``competence`` as a list)."""
        return list(self.competence)

    def member(self) -> MemberConsensus:
        """The part a member reads."""
        return MemberConsensus(**{k: getattr(self, k) for k in type(self).model_fields if reader(type(self), k) != SERVER})

    @property
    def reads(self) -> tuple[list[str], list[str]]:
        """The arrays (``consensus.ROUND_ARRAYS``) and the consensus settings the rule reads."""
        return ([], []) if self.rule == REFERENCE_BOUND else rule_inputs(load_rule(self.rule), self.rule)

    @property
    def used_signal(self) -> str | None:
        """The signal the rule reads (None for rules that read none)."""
        if "competence" not in self.reads[0]:
            return None
        return self.signal or self.competence[0]

    @property
    def oracle(self) -> bool:
        """A measurement bound (it reads who each domain's expert is, or the references), never a deployment."""
        return self.rule == REFERENCE_BOUND or "expert" in self.reads[0]


class EvalConfig(Strict):
    before: bool = Field(True, description="also evaluate the base model before training")
    batch_size: int = Field(8, gt=0, description="held-out items per forward pass")
    generate: bool = Field(True, description="greedy answers to the eval prompts: ROUGE-L, cosine, GSM8K match")
    max_new_tokens: int | None = Field(None, gt=0, description="default: per domain, enough for 95% of its "
                                       "references in the client's tokenizer (at least 256 for numeric tasks)")
    generate_items: int = Field(32, ge=0, description="items per domain for the generation metrics (ROUGE-L, "
                                "cosine, exact match); NLL, bits per byte and accuracy use every item")
    mmlu_prompt: Literal["chat", "lm_eval"] = Field(
        "chat", description="multiple choice: the question with lettered options in the chat template, or "
        "lm-evaluation-harness's zero-shot MMLU prompt (subject line, 'Answer:', continuations ' A'..' D')")
    every_round: bool = Field(True, description="reference NLL after every round (quality-per-round plots)")
    energy: bool = Field(True, description="track energy with codecarbon's offline tracker")


class NetworkConfig(Strict):
    """A link model for the transfer time of an in-process run (bytes are measured, time is modelled)."""

    uplink_mbps: float = Field(20.0, gt=0, description="client to server, Mbit/s (hospital-to-cloud WAN)")
    downlink_mbps: float = Field(100.0, gt=0, description="server to client, Mbit/s")
    latency_ms: float = Field(50.0, ge=0, description="one-way latency per message")


class PrivacyConfig(Strict):
    """The output-privacy audit (canaries planted in one client's private data, measured every round) and the
    client-side upload filter; see ``privacy.py``."""

    canaries: int = Field(0, ge=0, le=1000, description="unique random secrets ('The access code of account 4821 "
                          "is 7391-2284.') planted into `client`'s private rows at the split; 0: no audit")
    repeats: int = Field(1, ge=1, le=100, description="times each canary is planted")
    client: str | None = Field(None, description="the client whose data holds the canaries (default: the first)")
    candidates: int = Field(100, ge=1, le=100_000, description="random codes of the same format each secret's "
                            "exposure ranks it among (exposure at most log2(candidates + 1))")
    filter: list[Literal["ngram", "pii"]] = Field([], description="before upload: ngram withholds an answer that "
                                                  "shares `ngram` tokens in a row with the client's private data; "
                                                  "pii redacts e-mails, IBANs, card, phone and code-like digit runs", **read_by(UPLOADS))
    ngram: int = Field(8, ge=2, le=64, description="the run length of the ngram filter, in word tokens", **read_by(UPLOADS))
    fishing: bool = Field(False, description="a coordinator fishing for the canaries: the first public prompts "
                          "ask for them, 3 per canary knowing its account (its question, a paraphrase, its prefix to "
                          "complete) and 4 knowing only the context (data/canaries.py); the rest of "
                          "`public.num_prompts` come from the domains as usual. Needs `canaries` and "
                          "`public.per_round: fixed`")


class FlowerConfig(Strict):
    """Deployment on Flower (``semcon flower``): how long the server waits for nodes and replies."""

    phase_timeout_s: float = Field(1800.0, gt=0, description="seconds the server waits for the replies of one "
                                   "phase; a node that has not replied by then counts as failed for the round")
    connect_timeout_s: float = Field(300.0, gt=0, description="seconds to wait for min_clients nodes at start")
    hello_timeout_s: float = Field(60.0, gt=0, description="seconds a new node has to say which client it holds "
                                   "(a silent one is asked again at the next phase)")
    members: Path | None = Field(None, description="members.yaml from `semcon flower register`: each partition "
                                 "id pinned to the Flower node id of the one registered node that may hold it; "
                                 "without it a client goes to the first node that claims it")
    signer: Path | None = Field(None, description="the coordinator's Ed25519 key (`signer` from `semcon flower "
                                "certs`, set by `semcon flower run --certs`): the ServerApp signs every message to "
                                "a node with it, and a node whose node config names `coordinator-key` acts on "
                                "nothing else")


class RunConfig(Strict):
    """Everything a run needs. Unknown keys are errors."""

    name: str = Field("semcon", description="run name (default run directory runs/NAME-TIME)")
    method: Method = Field("semantic_consensus", description="semantic_consensus | fedavg | fedprox | local | "
                           "centralized (the baselines share data, models, rounds and training budget)")
    seed: int = Field(0, description="private sampling, adapter init and data order (see data.split_seed)")
    seeds: int | dict[Method | Literal["local+"], int] = Field(1, description="semcon compare: runs per method, seeds seed, seed+1, ...; "
                                           "a mapping gives each method its own count (default 1)")
    rounds: int = Field(2, ge=0, description="consensus rounds after round 0 (private-only training)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is visible, else cpu")
    precision: Precision = Field("auto", description="dtype of the shared frozen base weights; auto: bf16 "
                                 "where the CPU/GPU has native bf16, else fp32 (LoRA weights stay fp32)")
    resident_models: Literal["auto", "all", "one"] = Field(
        "auto", description="auto: keep every base model loaded when their weights fit memory_budget_gb, "
        "else load one at a time for its phase; all / one force either")
    memory_budget_gb: float | None = Field(None, gt=0, description="for base weights (default: half the RAM)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    clients: Annotated[Annotated[list[ClientConfig], Tag("list")] | Annotated[ClientTemplate, Tag("template")],
                       Discriminator(_clients_kind)] = Field(
        description="a list of clients, or one template: {count: 100, name: 'c{i:03d}', model: ..., data: [...]}")
    clients_per_round: int | float | None = Field(
        None, gt=0, description="clients sampled per round (a number, or a fraction of all), drawn from the seed, "
        "the same for every method; default: all")
    min_clients: int | None = Field(None, gt=0, description="a round completes when at least this many clients "
                                    "answered and trained; fewer stop the run (resumable). Default: a majority "
                                    "of a round's clients")
    data: DataConfig = Field(DataConfig(), description="how private rows, evaluation sets and public prompts are drawn")
    public: PublicConfig = Field(PublicConfig(), description="the shared public prompts every client answers")
    train: TrainConfig = Field(TrainConfig(), description="each client's local LoRA training per round")
    generate: GenerateConfig = Field(GenerateConfig(), description="how clients answer the public prompts")
    consensus: ConsensusConfig = Field(ConsensusConfig(), description="how the server picks a pseudo-label per prompt")
    eval: EvalConfig = Field(EvalConfig(), description="held-out evaluation of every client")
    network: NetworkConfig = Field(NetworkConfig(), description="the modelled link of an in-process run")
    flower: FlowerConfig = Field(FlowerConfig(), description="timeouts and members of a run on Flower")
    privacy: PrivacyConfig = Field(PrivacyConfig(), description="the output-privacy audit and the upload filter")
    adversaries: Adversaries | None = Field(None, description="make the last `count` clients attackers, all with "
                                            "this attack (for robustness sweeps; see AttackConfig)")
    log: list[Literal["tensorboard", "wandb"]] = Field(
        [], description="also show every metrics.jsonl row in TensorBoard (RUN_DIR/tensorboard) and/or Weights & "
        "Biases (offline unless WANDB_MODE says otherwise); metrics.jsonl stays the record")

    _safe_name = field_validator("name")(lambda name: check_name(name, "run name"))

    @field_validator("clients")
    @classmethod
    def _expand(cls, clients: list[ClientConfig] | ClientTemplate) -> list[ClientConfig]:
        if isinstance(clients, ClientTemplate):
            return clients.expand()
        if not clients:
            raise ValueError("at least one client is needed")
        return clients

    @property
    def per_round(self) -> int | None:
        """Clients sampled per round (None: every client, every round)."""
        k = self.clients_per_round
        if k is None or self.method == "centralized":
            return None
        return max(1, round(k * len(self.clients))) if isinstance(k, float) else k

    @property
    def needed_clients(self) -> int:
        """Clients that must complete each phase of a round (centralized has one model)."""
        if self.method == "centralized":
            return 1
        return self.min_clients or (self.per_round or len(self.clients)) // 2 + 1

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if dupes := repeated_ignoring_case([c.name for c in self.clients]):
            raise ValueError(f"client names must be unique ignoring case, repeated: {', '.join(dupes[:5])}")
        if self.data.partition == "category":
            if missing := [c.name for c in self.clients if c.data is None]:
                raise ValueError(f"partition=category needs 'data' for every client; missing for: {', '.join(missing)}")
        elif all(c.data is None for c in self.clients):
            raise ValueError("no client names a data selection, so there is nothing to partition")
        k = self.clients_per_round
        if isinstance(k, float) and k > 1:
            raise ValueError(f"clients_per_round: a fraction must be in (0, 1], not {k}")
        if isinstance(k, int) and k > len(self.clients):
            raise ValueError(f"clients_per_round={k} exceeds the {len(self.clients)} clients")
        if self.min_clients is not None and self.min_clients > len(self.clients):
            raise ValueError(f"min_clients={self.min_clients} exceeds the {len(self.clients)} clients")
        if self.privacy.client is not None and self.privacy.client not in [c.name for c in self.clients]:
            raise ValueError(f"privacy.client: no client {self.privacy.client!r}")
        if self.privacy.fishing and not (self.privacy.canaries and self.public.per_round == "fixed"):
            raise ValueError("privacy.fishing needs privacy.canaries > 0 and public.per_round: fixed")
        if self.adversaries is not None and self.adversaries.count > len(self.clients):
            raise ValueError(f"adversaries.count={self.adversaries.count} exceeds the {len(self.clients)} clients")
        if self.min_clients is not None and self.per_round and self.min_clients > self.per_round:
            raise ValueError(f"min_clients={self.min_clients} exceeds the {self.per_round} clients of a round")
        return self

    def attack_of(self, name: str) -> AttackConfig | None:
        """Client ``name``'s attack: its own, else the run's ``adversaries`` where it is one of the last ``count``
        (with ``rotate``, the ``count`` ending ``seed`` clients before the last)."""
        own = next((c for c in self.clients if c.name == name), None)
        if own is not None and own.attack is not None:
            return own.attack
        adv, n = self.adversaries, len(self.clients)
        if own is None or adv is None or adv.count == 0:
            return None
        back = self.seed % n if adv.rotate else 0
        if (self.clients.index(own) + back) % n < n - adv.count:
            return None
        return AttackConfig(**adv.model_dump(exclude={"count", "rotate"}))

    @property
    def canary_client(self) -> str | None:
        """The client whose private data holds the canaries (None: no audit)."""
        return (self.privacy.client or self.clients[0].name) if self.privacy.canaries else None

    @property
    def attackers(self) -> list[str]:
        """The clients that attack, in config order (for measurement: the attackers' share of the labels)."""
        return [c.name for c in self.clients if self.attack_of(c.name) is not None]

    def dump(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def client_settings(self, name: str | None = None, steps: int | None = None) -> ClientSettings:
        """The settings of client ``name``: its own where it sets them, else the run's (None: the pooled model)."""
        own = next((c for c in self.clients if c.name == name), None)
        return ClientSettings(
            seed=self.seed, steps=self.train.steps if steps is None else steps,
            lora=(own and own.lora) or self.train.lora, lr=(own and own.lr) or self.train.lr,
            batch_size=(own and own.batch_size) or self.train.batch_size,
            max_new_tokens=(own and own.max_new_tokens) or self.generate.max_new_tokens,
            gen_batch_size=self.generate.batch_size, max_answer_chars=self.consensus.max_answer_chars,
            train=self.train, eval=self.eval, consensus=self.consensus.member(), attack=self.attack_of(name),
            privacy=self.privacy)


@dataclass(frozen=True)
class MemberConsensus:
    """The consensus settings a member reads (those not declared ``SERVER``): the embedder and limits of its
    answers, the competence it computes and sends, and ``skip_own``."""

    embedder: str
    embed_batch_size: int
    max_answer_chars: int
    competence: list[str]
    competence_levels: int | None
    knn_k: int
    skip_own: bool


def method_problem(cfg: RunConfig) -> str | None:
    """Why this method cannot run on this federation, or None when it can: parameter averaging
    (fedavg/fedprox) and centralized training (one model on the pooled data) need one base model."""
    if cfg.method not in ("fedavg", "fedprox", "centralized") or len({c.model for c in cfg.clients}) == 1:
        return None
    models = ", ".join(f"{c.name}={c.model}" for c in cfg.clients)
    why = "averages adapter weights" if cfg.method != "centralized" else "trains one model on the pooled data"
    return f"{cfg.method} {why} and needs one base model for all clients; got {models}"


def member_tree(tree: dict) -> dict:
    """A config tree as a member reads it: the coordinator's consensus settings (the rule, its settings, the
    defences) left out, so a member neither needs nor checks them (a user's rule imports on the coordinator only)."""
    consensus = tree.get("consensus") or {}
    return {**tree, "consensus": {k: v for k, v in consensus.items()
                                  if k not in ConsensusConfig.model_fields or reader(ConsensusConfig, k) != SERVER}}


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs from the config, resolved once (per-client values over run-wide ones)."""

    seed: int
    steps: int
    lora: LoraConfig
    lr: float
    batch_size: int
    max_new_tokens: int
    gen_batch_size: int
    max_answer_chars: int  # the server's limit: a longer answer is cut and flagged as cut
    train: TrainConfig  # max_length, truncate, micro_batch_tokens, pseudo_label_weight
    eval: EvalConfig
    consensus: MemberConsensus  # the member's part: competence signals, their levels, skip_own
    attack: AttackConfig | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # the audit's canaries (measured by every client) and the filter


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (numbers, lists, mappings)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key!r}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
        except RecursionError:
            raise ConfigError(f"override {key!r}: value nested too deeply") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _one_line(err: ValidationError, origin: str, overrides: list[str] = ()) -> str:
    """The first validation error as ``ORIGIN: KEY: reason``; ORIGIN is the ``--set`` that gave the key, if one did."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in UNION_TAGS) or "(top level)"
    given = [o for o in overrides if loc == (key := o.partition("=")[0].strip()) or loc.startswith(f"{key}.")]
    origin = f"--set {given[-1]}" if given else origin
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: {loc}: {msg}{more}"


def resolve_paths(cfg: RunConfig, base: Path, check_files: bool = True) -> RunConfig:
    """Make relative data paths absolute against ``base`` and (``check_files``) check that the files exist."""
    def resolved(key: str, path: Path) -> Path:
        path = path if path.is_absolute() else (base / path).resolve()
        if check_files and not path.is_file():
            raise ConfigError(f"{key}: file not found: {path}")
        return path

    def selection(key: str, sel: DataSelection | None) -> None:
        if sel is None or sel.path is None:
            return
        if sel.source == "hf":  # a local directory or file where one exists, else a hub name (kept as written)
            local = sel.path if sel.path.is_absolute() else base / sel.path
            sel.path = local.resolve() if local.exists() else sel.path
        else:
            sel.path = resolved(f"{key}.path", sel.path)

    for i, c in enumerate(cfg.clients):
        selection(f"clients.{i}.data", c.data)
        if check_files and (problem := model_problem(c.model)):
            raise ConfigError(f"clients.{i}.model (client {c.name!r}): {problem}")
    selection("public.data", cfg.public.data)
    if cfg.flower.members is not None:
        cfg.flower.members = resolved("flower.members", cfg.flower.members)
    if cfg.public.path is not None:
        cfg.public.path = resolved("public.path", cfg.public.path)
    return cfg


def unread_settings(consensus: dict | None) -> list[str]:
    """The settings in a consensus section (as written) that its rule does not read though another rule does: a
    rule's own settings (``gate``, ``temperature``), and ``signal`` and ``competence_norm`` without competence."""
    consensus, rule = consensus or {}, (consensus or {}).get("rule", "medoid")
    if not isinstance(consensus, dict) or not isinstance(rule, str):
        return []
    try:
        arrays, knobs = ([], []) if rule == REFERENCE_BOUND else rule_inputs(load_rule(rule), rule)
    except ValueError:
        return []  # validation names the rule's problem
    others = {k for r in RULES.values() for k in rule_inputs(r)[1]} - set(knobs)
    if "competence" not in arrays:
        others |= {"signal", "competence_norm"}
    fields = ConsensusConfig.model_fields
    return [k for k, v in consensus.items() if k in others and k in fields and v != fields[k].default]


def config_key(cfg: RunConfig, level: Literal["run", "answers", "round0", "no answers"] = "run") -> str:
    """What decides a run, as a string to compare, from each setting's declared reader: ``run``, the whole config
    but its name, its seeds plan and trackers (an ``adversaries`` of count 0 is none); ``answers``, its round 0 and
    round-1 answers, which the ``SERVER`` and ``LABELS`` settings do not change; ``round0``, round 0 alone, which
    the ``UPLOADS`` settings (and attacks that leave the private data alone) do not change either; ``no answers``,
    round 0 of a method that exchanges no answers, which reads no consensus setting at all."""
    tree = cfg.model_dump(mode="json")
    for key in ("name", "seeds", "log"):
        tree.pop(key, None)
    if tree["adversaries"] and tree["adversaries"]["count"] == 0:
        tree["adversaries"] = None
    later = {"answers": {SERVER, LABELS}}.get(level, {SERVER, LABELS, UPLOADS} if level != "run" else set())
    for name, field in RunConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and isinstance(tree.get(name), dict):
            tree[name] = {k: v for k, v in tree[name].items() if reader(field.annotation, k) not in later}
    if UPLOADS in later:  # an attack that leaves the private data alone acts on its uploads only
        for holder, key in [(tree, "adversaries"), *((c, "attack") for c in tree["clients"])]:
            if holder.get(key) and not holder[key]["poison_private"]:
                holder[key] = None
    if level == "no answers":
        tree.pop("consensus")
    return json.dumps(tree, sort_keys=True)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                tree: dict | None = None, check_files: bool = True, written: bool = False) -> RunConfig:
    """Load YAML (or a dict), apply overrides, validate. Raises ConfigError with one line.

    ``check_files=False``: files named in the config need not exist here (a Flower node has only its own data).
    A consensus setting the rule does not read is refused, unless an override changed the rule (it is dropped
    then, as it is from a config semcon ``written`` into a run folder before it refused them).
    """
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a semcon config") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys")
    tree = apply_overrides(copy.deepcopy(tree or {}), overrides or [])
    if unread := unread_settings(tree.get("consensus")):
        overridden = {o.partition("=")[0].strip() for o in overrides or []}
        if not written:
            said = [k for k in unread if f"consensus.{k}" in overridden] if "consensus.rule" in overridden else unread
            if said:
                where = next((f"--set {o}" for o in overrides or [] if o.startswith(f"consensus.{said[0]}=")), origin)
                raise ConfigError(f"{where}: consensus.{said[0]}: rule {tree['consensus'].get('rule', 'medoid')!r} "
                                  "does not read it (remove it, or choose a rule that does)")
        tree["consensus"] = {k: v for k, v in tree["consensus"].items() if k not in unread}
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_one_line(e, origin, overrides or [])) from None
    return resolve_paths(cfg, path.parent if path is not None else Path.cwd(), check_files)
