"""A client: its own model (a LoRA adapter on a shared base), its private data, and the things it does."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors

from semcon.config import ClientSettings
from semcon.data import Example, Prompt
from semcon.member.attacks import attack
from semcon.member.competence import gain_competence, knn_competence, quantize
from semcon.member.evaluate import evaluate_client, generation_requests, reference_scores, request_rows, split_answers
from semcon.member.generate import Generation, generate
from semcon.member.models import Backbone
from semcon.member.privacy import NgramIndex, filter_answers, withheld_flags
from semcon.member.train import IGNORE, TokenizedExample, TrainStats, nll_sums, tokenize, train_lora
from semcon.names import child
from semcon.protocol import AdapterUpdate, Download, Upload

log = logging.getLogger(__name__)


def client_seed(run_seed: int, round: int, cid: int) -> int:
    """The seed of client ``cid``'s randomness in ``round`` (adapter init, batch order, a poisoning attack)."""
    return run_seed * 1_000_003 + round * 1_009 + cid


def round_to(x: float, digits: int = 5) -> float:
    """Confidence as uploaded: five decimals are all a tie-break needs, and they compress better."""
    return float(round(x, digits))


class Client:
    """Trains on private data plus the pseudo-labels it last received, answers public prompts, evaluates itself.

    Holds no weights of its own beyond its adapter: ``backbone`` may be shared with other clients.
    ``adapter_seed`` makes adapters start identical (parameter averaging needs a common start). ``embedder``:
    the consensus embedder, for the knn competence signal.
    """

    GAIN_CALIBRATION = 32  # private examples the gain signal is calibrated on

    def __init__(self, cid: int, name: str, backbone: Backbone, private: list[Example], settings: ClientSettings,
                 adapter_seed: int | None = None, embedder=None):
        self.cid, self.name, self.backbone, self.settings = cid, name, backbone, settings
        self.private, self.embedder = private, embedder
        self.steps = settings.steps
        self.fmt = backbone.fmt
        self.pseudo: Download | None = None
        self.sent: dict[str, str] = {}  # prompt id -> the answer this client last uploaded (for skip_own)
        self._private_emb = None  # the private instructions embedded (knn), once
        self._private_base = None  # the base model's mean log-probability of private responses (gain), once
        self._ngrams = None  # the hashed n-grams of the private data (privacy.filter: ngram), once
        self.filtered = {"withheld": 0, "redacted": 0}  # what the filter did to the last upload
        self._private_tok, self.dropped_private = self.tokenize_rows([(e.instruction, e.response, 1.0) for e in private])
        if self.dropped_private:
            log.warning("client %s: dropped %d of %d private examples longer than train.max_length=%d",
                        name, self.dropped_private, len(private), settings.train.max_length)
        if name not in backbone.adapters:
            backbone.add_adapter(name, settings.lora, seed=self.seed(0) if adapter_seed is None else adapter_seed)

    def seed(self, round: int) -> int:
        return client_seed(self.settings.seed, round, self.cid)

    def tokenize_rows(self, triples: list[tuple[str, str, float]], end: bool = True) -> tuple[list[TokenizedExample], int]:
        t = self.settings.train
        return tokenize(self.fmt, triples, t.max_length, truncate=t.truncate, end=end)

    def train(self, round: int, prompts: list[Prompt], prox_mu: float = 0.0, on_step=None) -> TrainStats:
        """One round's fine-tuning of the adapter, by ``train.schedule``: ``mixed`` takes its steps from private
        data ∪ pseudo-labelled public prompts (a plain union, weight λ); ``additive`` runs exactly local's private
        steps, then steps over the labels alone. ``train.extra_steps`` more over the private rows come last, from
        round 1 on (as label steps: round 0 has no labels), so that ``local+`` trains as many steps as additive.
        A pseudo-label that was cut at the length cap (kept by ``consensus.truncated: keep``) gets no end-of-turn."""
        import torch

        t, seed = self.settings.train, self.seed(round)
        labels, dropped = self._labels(prompts)
        if t.schedule == "mixed":
            phases = [(self._private_tok + labels, self.steps, seed, prox_mu)]
        else:
            phases = [(self._private_tok, self.steps, seed, prox_mu),
                      (labels, self.label_steps(len(labels)), f"{seed}:labels", 0.0)]
        phases.append((self._private_tok, t.extra_steps if round else 0, f"{seed}:extra", 0.0))
        torch.manual_seed(seed)
        stats = [self._fit(rows, steps, stream, mu, on_step) for rows, steps, stream, mu in phases if rows and steps]
        return TrainStats(sum(s.steps for s in stats), sum(s.tokens for s in stats), [x for s in stats for x in s.losses],
                          sum(s.seconds for s in stats), self.dropped_private + dropped)

    def planned_steps(self, labels: int) -> int:
        """Optimizer steps of a round in which ``labels`` pseudo-labels arrive (for progress)."""
        t = self.settings.train
        return self.steps + t.extra_steps + (self.label_steps(labels) if t.schedule == "additive" else 0)

    def label_steps(self, labels: int) -> int:
        """Additive schedule: the steps over ``labels`` received labels (``train.label_steps``, else
        ``label_epochs`` passes in whole batches)."""
        t = self.settings.train
        return t.label_steps if t.label_steps is not None else math.ceil(t.label_epochs * labels / self.settings.batch_size)

    def _labels(self, prompts: list[Prompt]) -> tuple[list[TokenizedExample], int]:
        """The received pseudo-labels as weighted training rows (none when λ = 0), without this client's own
        answers under ``consensus.skip_own``; and how many were too long to keep."""
        s = self.settings
        lam = s.train.pseudo_label_weight
        if self.pseudo is None or lam <= 0:
            return [], 0
        by_id = {p.id: p.instruction for p in prompts}
        own = self.sent if s.consensus.skip_own else {}
        examples, dropped = [], 0
        for end in (True, False):
            rows = [(by_id[pid], text, lam) for pid, text in self.pseudo.labels.items()
                    if pid in by_id and self.pseudo.finished.get(pid, True) is end and own.get(pid) != text]
            tokenized, lost = self.tokenize_rows(rows, end=end)
            examples, dropped = examples + tokenized, dropped + lost
        return examples, dropped

    def _fit(self, examples: list[TokenizedExample], steps: int, seed: int | str, prox_mu: float, on_step
             ) -> TrainStats:
        s = self.settings
        with self.backbone.active(self.name) as model:
            return train_lora(model, self.fmt, examples, steps=steps, batch_size=s.batch_size, lr=s.lr, seed=seed,
                              device=self.backbone.device, dtype=self.backbone.dtype,
                              micro_batch_tokens=s.train.micro_batch_tokens, prox_mu=prox_mu, on_step=on_step)

    def answer(self, round: int, prompts: list[Prompt], on_batch=None) -> Upload:
        """Greedy answers to every public prompt, as text (see ``answer_together``)."""
        return answer_together([self], round, prompts, on_batch)[self.name]

    def upload_of(self, round: int, prompts: list[Prompt], outs: list[Generation]) -> Upload:
        """The upload of these answers, with the competence signals the run asks for. An answer longer than the
        server accepts (``consensus.max_answer_chars``) is cut to it and flagged as cut, so the upload stays valid.
        An attacking client (``attack``) changes only this message."""
        limit, privacy = self.settings.max_answer_chars, self.settings.privacy
        answers = {p.id: o.text[:limit] for p, o in zip(prompts, outs)}
        finished = {p.id: o.finished and len(o.text) <= limit for p, o in zip(prompts, outs)}
        if privacy.filter:  # before anything leaves: withhold what overlaps the private data, redact PII
            if "ngram" in privacy.filter and self._ngrams is None:
                self._ngrams = NgramIndex([t for e in self.private for t in (e.instruction, e.response)], privacy.ngram)
            filtered = filter_answers(answers, privacy.filter, self._ngrams)
            answers, finished = filtered.answers, withheld_flags(finished, filtered)
            self.filtered = {"withheld": filtered.withheld, "redacted": filtered.redacted}
        honest = Upload(round=round, client=self.name, answers=answers, finished=finished,
                        confidence={p.id: round_to(o.confidence) for p, o in zip(prompts, outs)},
                        competence=self.competence(prompts, outs))
        upload = attack(honest, self.settings.attack, prompts, [e.response for e in self.private], self.settings.seed,
                        own_domain=Counter(e.domain for e in self.private).most_common(1)[0][0] if self.private else None)
        self.sent = dict(upload.answers)
        return upload

    def competence(self, prompts: list[Prompt], outs: list[Generation]) -> dict[str, dict[str, float]]:
        """Each asked-for signal per prompt, computed from this client's own data and model only, calibrated
        against its private rows and quantized to ``consensus.competence_levels`` (see ``competence.py``)."""
        cfg = self.settings.consensus
        values = {"knn": self._knn, "gain": self._gain}
        return {signal: {p.id: round_to(float(v)) for p, v in
                         zip(prompts, quantize(values[signal](prompts, outs), cfg.competence_levels))}
                for signal in cfg.competence}

    def _knn(self, prompts: list[Prompt], outs: list[Generation]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError(f"client {self.name!r}: the knn competence signal needs the consensus embedder")
        if self._private_emb is None:
            self._private_emb = self.embedder([e.instruction for e in self.private])
        return knn_competence(self._private_emb, self.embedder([p.instruction for p in prompts]),
                              self.settings.consensus.knn_k)

    def _gain(self, prompts: list[Prompt], outs: list[Generation]) -> np.ndarray:
        """Per answer, its mean token log-probability under this client's adapter (its ``confidence``, from
        generation) minus that under the frozen base model; calibrated on the same log-ratio of private responses.
        The end-of-turn token counts where the template ends turns with one; a base model's stop text does not."""
        eos = self.fmt.tok.eos_token_id
        end = [eos] if self.fmt.stop is None and eos is not None else []
        answers = []
        for p, o in zip(prompts, outs):
            prompt, answer = self.fmt.prompt_ids(p.instruction), o.tokens + (end if o.finished else [])
            answers.append(TokenizedExample(prompt + answer, [IGNORE] * len(prompt) + answer))
        gains = np.array([o.confidence for o in outs]) - self._mean_logprob(answers, base=True)
        calibration = self._private_tok[:self.GAIN_CALIBRATION]
        if self._private_base is None:
            self._private_base = self._mean_logprob(calibration, base=True)
        return gain_competence(gains, self._mean_logprob(calibration, base=False) - self._private_base)

    def _mean_logprob(self, examples: list[TokenizedExample], base: bool) -> np.ndarray:
        """Mean log-probability per response token of each example, under the base model or this client's adapter
        (0 for an example without response tokens)."""
        if not examples:
            return np.zeros(0)
        sums, counts = self.response_nll(examples, base)
        return -sums / np.maximum(counts, 1)

    def response_nll(self, examples: list[TokenizedExample], base: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Summed negative log-likelihood of each example's response tokens, and their count, under the base
        model or this client's adapter."""
        with self.backbone.active(None if base else self.name) as model:
            sums, counts, _ = nll_sums(model, self.fmt, examples, batch_size=self.settings.eval.batch_size,
                                       device=self.backbone.device, dtype=self.backbone.dtype)
        return np.array(sums), np.array(counts)

    def adapter_update(self, round: int) -> AdapterUpdate:
        """This client's adapter tensors, for the parameter-averaging baselines."""
        return AdapterUpdate(round=round, client=self.name, tensors=save_tensors(self._adapter_tensors()),
                             num_examples=len(self.private))

    def adds_nothing(self) -> bool:
        """Whether the adapter is still the identity (every LoRA B is zero, as before any training)."""
        return self.backbone.adds_nothing(self.name)

    def adapter_digest(self) -> str:
        """A hash of the adapter's weights: equal digests, equal models."""
        h = hashlib.blake2b(digest_size=16)
        for key, tensor in sorted(self._adapter_tensors().items()):
            h.update(key.encode())
            h.update(tensor.float().numpy().tobytes())
        return h.hexdigest()

    def _adapter_tensors(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.backbone.adapter_state(self.name).items()}

    def load_adapter(self, msg: AdapterUpdate) -> None:
        self.backbone.load_adapter_state(self.name, load_tensors(msg.tensors))

    def reference(self, eval_sets: dict[str, list[Example]]) -> dict[str, dict[str, float]]:
        """Held-out reference NLL and bits per byte per domain (teacher forced): cheap, every round."""
        with self.backbone.active(self.name) as model:
            return {d: {k: round(v, 5) for k, v in reference_scores(
                        model, self.fmt, rows, batch_size=self.settings.eval.batch_size, device=self.backbone.device,
                        dtype=self.backbone.dtype).items()} for d, rows in eval_sets.items()}

    def evaluate(self, eval_sets: dict[str, list[Example]], base: bool = False, embed=None,
                 answers: dict[str, list[str]] | None = None) -> dict:
        """Every held-out metric per domain (see ``evaluate.py``); ``base``: the model without adapter;
        ``answers``: its answers to the generation rows, when already generated (``evaluate_together``)."""
        with self.backbone.active(None if base else self.name) as model:
            return evaluate_client(model, self.fmt, eval_sets, self.settings.eval, embed=embed,
                                   gen_batch_size=self.settings.gen_batch_size, device=self.backbone.device,
                                   dtype=self.backbone.dtype, answers=answers)

    def save_state(self, directory: Path, round: int, keep: int = 2) -> Path:
        """Write the adapter as it stands after ``round`` (atomically) and keep only the last ``keep``, and round
        0's (a run that differs only in its consensus starts from it: ``simulation.fork``)."""
        folder = child(directory, self.name, "client name")
        folder.mkdir(parents=True, exist_ok=True)
        path, tmp = folder / f"round_{round:02d}.safetensors", folder / f".round_{round:02d}.tmp"
        save_file(self._adapter_tensors(), tmp)
        os.replace(tmp, path)
        for old in sorted(folder.glob("round_*.safetensors"))[:-keep]:
            if old.name != "round_00.safetensors":
                old.unlink()
        return path

    def restore_state(self, directory: Path, upto: int) -> int | None:
        """Load the newest saved adapter of a round <= ``upto``; None (fresh adapter) when there is none."""
        folder = child(directory, self.name, "client name")
        saved = {int(p.stem.split("_")[1]): p for p in folder.glob("round_*.safetensors")}
        rounds = [r for r in saved if r <= upto]
        if not rounds:
            return None
        self.backbone.load_adapter_state(self.name, load_file(saved[max(rounds)]))
        return max(rounds)


def answer_together(clients: list[Client], round: int, prompts: list[Prompt], on_batch=None) -> dict[str, Upload]:
    """Each client's greedy answers to the public prompts. Clients on one base model (with the same generation
    settings) answer in shared batches, each row through its own adapter: one forward pass per token for all
    of them instead of one per client."""
    uploads = {}
    for members in _sharing(clients, lambda c: (c.settings.max_new_tokens, c.settings.gen_batch_size)):
        outs = _answers(members, [p.instruction for p in prompts], members[0].settings.max_new_tokens, on_batch)
        for c, out in zip(members, outs):
            uploads[c.name] = c.upload_of(round, prompts, out)
    return uploads


def evaluate_together(clients: list[Client], eval_sets: dict[str, list[Example]], embed=None) -> dict[str, dict]:
    """Each client's held-out metrics (``Client.evaluate``), the generation rows of clients on one base model
    answered in shared batches as in ``answer_together``; the teacher-forced metrics run client by client."""
    out = {}
    for members in _sharing(clients, lambda c: (c.settings.gen_batch_size, c.settings.eval.model_dump_json())):
        requests = generation_requests(members[0].fmt, eval_sets, members[0].settings.eval)
        texts, caps = request_rows(requests)  # every domain's rows of every member in one queue
        outs = _answers(members, texts, caps) if texts else [[] for _ in members]
        for c, mine in zip(members, outs):
            out[c.name] = c.evaluate(eval_sets, embed=embed, answers=split_answers(requests, [g.text for g in mine]))
    return out


def _sharing(clients: list[Client], key) -> Iterator[list[Client]]:
    """Clients that can answer in shared batches: one base model and the same ``key``, ``Backbone.max_slots``
    at a time."""
    groups: dict[tuple, list[Client]] = {}
    for c in clients:
        groups.setdefault((id(c.backbone), key(c)), []).append(c)
    for same in groups.values():
        for at in range(0, len(same), Backbone.max_slots):
            yield same[at:at + Backbone.max_slots]


def _answers(members: list[Client], instructions: list[str], max_new_tokens: int | list[int], on_batch=None
             ) -> list[list[Generation]]:
    """Each member's greedy answers to ``instructions``: every member's rows in the same batches, each row
    through its member's adapter."""
    first, bb, n = members[0], members[0].backbone, len(instructions)
    slots = bb.hold([c.name for c in members])
    with bb.active(first.name) as model:
        caps = max_new_tokens * len(members) if isinstance(max_new_tokens, list) else max_new_tokens
        outs = generate(model, first.fmt, instructions * len(members), max_new_tokens=caps,
                        batch_size=first.settings.gen_batch_size, device=bb.device, dtype=bb.dtype, on_batch=on_batch,
                        adapters=None if len(members) == 1 else [a for a in slots for _ in instructions])
    return [outs[k * n:(k + 1) * n] for k in range(len(members))]
