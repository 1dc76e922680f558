"""A run's data split: each domain's rows carved into evaluation, public prompts and private sets."""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcon.config import ClientConfig, DataSelection, RunConfig
from semcon.data.canaries import canaries, fishing_prompts
from semcon.data.examples import DataError, Example, Prompt
from semcon.data.jsonl import read_prompts
from semcon.data.sources import load_selection

log = logging.getLogger(__name__)

MIXED = "mixed"  # client_domain of every client under partition=iid/dirichlet


@dataclass
class Splits:
    """The disjoint data of a run: private sets per client, public prompts, evaluation sets per domain."""

    private: dict[str, list[Example]]
    public: list[Prompt]
    eval: dict[str, list[Example]]
    client_domain: dict[str, str]


def _selection_key(sel: DataSelection) -> tuple:
    """What makes two selections the same data (the label aside)."""
    return sel.model_dump_json(exclude={"name"})


def _domain_selections(cfg: RunConfig) -> dict[str, DataSelection]:
    """Distinct domains of the run, sorted by label; DataError if one label names two different selections."""
    domains: dict[str, tuple[str, DataSelection]] = {}
    for c in cfg.clients:
        if c.data is None:
            continue
        label = c.data.domain
        if label in domains and _selection_key(domains[label][1]) != _selection_key(c.data):
            raise DataError(f"clients {domains[label][0]!r} and {c.name!r} use the domain label {label!r} "
                            "for different data; give them distinct data.name")
        domains.setdefault(label, (c.name, c.data))
    return {label: domains[label][1] for label in sorted(domains)}


def _drop_collisions(rows: dict[str, list[Example]], taken: set[str]) -> dict[str, list[Example]]:
    """Keep each instruction in one domain only (the first in sorted order) and out of ``taken``."""
    seen = set(taken)
    out: dict[str, list[Example]] = {}
    for domain, examples in rows.items():
        kept = []
        for ex in examples:
            key = ex.instruction.strip()
            if key not in seen:
                seen.add(key)
                kept.append(ex)
        if dropped := len(examples) - len(kept):
            log.warning("domain %s: dropped %d rows whose instruction is already in another domain "
                        "or in the public prompt file", domain, dropped)
        out[domain] = kept
    return out


def _shuffled(items: list, seed: str) -> list:
    """A copy of ``items`` shuffled by ``random.Random(seed)``."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def _public_quotas(available: dict[str, int], num: int) -> dict[str, int]:
    """Rows to draw per domain, round-robin in domain order, at most ceil(num / domains) each."""
    quota = dict.fromkeys(available, 0)
    total = 0
    for _ in range(math.ceil(num / len(available))):
        for domain, n in available.items():
            if total < num and quota[domain] < n:
                quota[domain] += 1
                total += 1
    return quota


def _spare(cfg: RunConfig, rest: dict[str, list[Example]]) -> dict[str, int]:
    """Rows each domain has beyond its evaluation set and the private rows its clients ask for (pooled partitions:
    every domain keeps all the clients' rows, so that the pool leaves the mix of the private rows as it was)."""
    members = [c for c in cfg.clients if c.data is not None]
    if cfg.data.partition == "category":
        need = {d: sum(_wanted(cfg, c) for c in members if c.data.domain == d) for d in rest}
    else:
        need = dict.fromkeys(rest, sum(_wanted(cfg, c) for c in cfg.clients))
    return {d: len(r) - need[d] for d, r in rest.items()}


def _pool(cfg: RunConfig, rest: dict[str, list[Example]]) -> dict[str, int]:
    """Rows each domain gives to the public pool (``public.pool``, else the same count from each domain: what
    the one that can spare fewest can spare, and at least the prompts the run answers), before any private row
    is dealt."""
    size = cfg.public.pool
    if size is None:
        size = max(len(rest) * min(_spare(cfg, rest).values(), default=0), cfg.public.drawn(cfg.rounds))
    return _public_quotas({d: len(r) for d, r in rest.items()}, size)


def _round_robin(slices: dict[str, list[Example]]) -> list[Prompt]:
    """Interleave the domains' public slices, each response kept only as the server's reference; ids
    ``p0000``... in order."""
    longest = max((len(s) for s in slices.values()), default=0)
    picked = [s[i] for i in range(longest) for s in slices.values() if i < len(s)]
    return [Prompt(f"p{i:04d}", ex.instruction, ex.domain, ex.response) for i, ex in enumerate(picked)]


def _wanted(cfg: RunConfig, client: ClientConfig) -> int:
    """The number of private examples a client asks for."""
    return client.num_examples or cfg.data.examples_per_client


def _take(pool: list[Example], start: int, need: int, client: str, domain: str) -> list[Example]:
    """``pool[start:start + need]``, or DataError naming the client and what the domain has left."""
    if start + need > len(pool):
        raise DataError(f"client {client!r}: domain {domain!r} has {len(pool) - start} private rows left "
                        f"({len(pool)} after eval and public, {start} given to other clients), {need} needed")
    return pool[start:start + need]


def _partition_category(cfg: RunConfig, pools: dict[str, list[Example]], clients: list[ClientConfig]
                        ) -> dict[str, list[Example]]:
    """Each client takes its domain's next rows; clients sharing a domain get disjoint slices."""
    out: dict[str, list[Example]] = {}
    start: dict[str, int] = defaultdict(int)
    for c in clients:
        domain, need = c.data.domain, _wanted(cfg, c)
        out[c.name] = _take(pools[domain], start[domain], need, c.name, domain)
        start[domain] += need
    return out


def _pooled(pools: dict[str, list[Example]], seed: str) -> list[Example]:
    """All private rows of all domains, shuffled."""
    return _shuffled([ex for domain in pools for ex in pools[domain]], seed)


def _partition_iid(cfg: RunConfig, pools: dict[str, list[Example]], clients: list[ClientConfig]
                   ) -> dict[str, list[Example]]:
    """Pool every domain's private rows, shuffle, and deal disjoint consecutive slices."""
    pool, domain = _pooled(pools, f"{cfg.seed}:iid"), f"{MIXED} ({', '.join(pools)})"
    out: dict[str, list[Example]] = {}
    start = 0
    for c in clients:
        need = _wanted(cfg, c)
        out[c.name] = _take(pool, start, need, c.name, domain)
        start += need
    return out


def _dirichlet_shares(groups: list[list[Example]], n_clients: int, alpha: float,
                      seed: int) -> list[list[Example]]:
    """Split each group among the clients in proportions drawn from Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    shares: list[list[Example]] = [[] for _ in range(n_clients)]
    for group in groups:
        p = rng.dirichlet(np.full(n_clients, alpha))
        bounds = [0, *(int(b) for b in np.round(np.cumsum(p)[:-1] * len(group))), len(group)]
        for i in range(n_clients):
            shares[i].extend(group[bounds[i]:bounds[i + 1]])
    return shares


def _partition_dirichlet(cfg: RunConfig, pools: dict[str, list[Example]], clients: list[ClientConfig]
                         ) -> dict[str, list[Example]]:
    """Per category of the pooled rows, Dirichlet(alpha) shares over clients, each capped at its count."""
    pool = _pooled(pools, f"{cfg.seed}:dirichlet")
    need = {c.name: _wanted(cfg, c) for c in clients}
    if len(pool) < sum(need.values()):
        raise DataError(f"clients {', '.join(need)}: domain {MIXED} ({', '.join(pools)}) has {len(pool)} "
                        f"private rows after eval and public, {sum(need.values())} needed")
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for ex in pool:
        groups[ex.domain, ex.category].append(ex)
    groups_sorted = [groups[k] for k in sorted(groups)]
    shares = _dirichlet_shares(groups_sorted, len(clients), cfg.data.alpha, cfg.seed)
    out: dict[str, list[Example]] = {}
    for c, share in zip(clients, shares, strict=True):
        # shuffle before capping so the cap keeps the client's category mix
        rows = _shuffled(share, f"{cfg.seed}:dirichlet:{c.name}")[:need[c.name]]
        if not rows:
            raise DataError(f"client {c.name!r}: its Dirichlet(alpha={cfg.data.alpha}) share of domain "
                            f"{MIXED} is empty; raise data.alpha or add data")
        if len(rows) < need[c.name]:
            log.warning("client %s: Dirichlet share has %d rows, fewer than the %d asked for",
                        c.name, len(rows), need[c.name])
        out[c.name] = rows
    return out


def _partition_flower(cfg: RunConfig, pools: dict[str, list[Example]], clients: list[ClientConfig]
                      ) -> dict[str, list[Example]]:
    """Flower Datasets' partitioner of ``data.partition`` over the pooled rows, grouped by category (within its
    domain) or domain; each client's partition is capped at the rows it asks for. ``natural_id`` gives each
    client the group of its own ``data`` domain where every client names one, else the i-th group in sorted order."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

    spec = cfg.data.partition
    pool = _pooled(pools, f"{cfg.seed}:{spec.partitioner}")
    # "\x00" sorts first, so the groups sort as (domain, category) pairs, the order semcon's Dirichlet uses
    groups = [ex.domain if spec.by == "domain" else f"{ex.domain}\x00{ex.category}" for ex in pool]
    where = f"clients {', '.join(c.name for c in clients[:3])}{', ...' if len(clients) > 3 else ''}"
    match spec.partitioner:
        case "iid":
            partitioner = IidPartitioner(len(clients))
        case "dirichlet":
            partitioner = DirichletPartitioner(len(clients), "group", spec.alpha, spec.min_partition_size,
                                               seed=cfg.seed)
        case "natural_id":
            partitioner = NaturalIdPartitioner("group")
    partitioner.dataset = Dataset.from_dict({"row": list(range(len(pool))), "group": groups})
    try:
        n = partitioner.num_partitions
        if n != len(clients):
            raise ValueError(f"natural_id by {spec.by} makes {n} partitions, one per {spec.by}, for "
                             f"{len(clients)} clients")
        parts = [partitioner.load_partition(i)["row"] for i in range(n)]
    except ValueError as e:
        raise DataError(f"{where}: data.partition {spec.partitioner}: {str(e).splitlines()[0]}") from None
    if spec.partitioner == "natural_id":
        ids = {natural.split("\x00")[0]: i for i, natural in partitioner.partition_id_to_natural_id.items()}
        if spec.by == "domain" and all(c.data is not None and c.data.domain in ids for c in clients):
            parts = [parts[ids[c.data.domain]] for c in clients]
    out: dict[str, list[Example]] = {}
    for c, rows in zip(clients, parts, strict=True):
        out[c.name] = [pool[i] for i in rows][:_wanted(cfg, c)]
        if not out[c.name]:
            raise DataError(f"client {c.name!r}: its {spec.partitioner} partition of the pooled data is empty")
    return out


PARTITIONS = {"category": _partition_category, "iid": _partition_iid, "dirichlet": _partition_dirichlet}


def _partition_name(cfg: RunConfig) -> str:
    spec = cfg.data.partition
    return spec if isinstance(spec, str) else f"{spec.partitioner} (Flower Datasets)"


def _partitioner(cfg: RunConfig):
    """The function that deals the private rows: semcon's own, or Flower Datasets' when the config names one."""
    return PARTITIONS[cfg.data.partition] if isinstance(cfg.data.partition, str) else _partition_flower


def _check_unique_ids(splits: Splits) -> None:
    """DataError if two examples share an id (e.g. two JSONL domains whose labels look alike)."""
    seen: set[str] = set()
    for examples in [*splits.private.values(), *splits.eval.values()]:
        for ex in examples:
            if ex.id in seen:
                raise DataError(f"example id {ex.id!r} occurs twice; give the domains distinct data.name")
            seen.add(ex.id)


def _readable(sel: DataSelection) -> bool:
    """Whether this machine can read a selection: embedded sources and hub data sets always (as far as we can
    tell), a JSONL file or local hf data where it exists."""
    if sel.source == "hf":
        return Path(sel.path).exists() or not Path(sel.path).is_absolute()  # a relative path left as is: a hub name
    return sel.source != "jsonl" or Path(sel.path).is_file()


def _carve(cfg: RunConfig, public: list[Prompt] | None = None, node: str | None = None,
           ) -> tuple[dict[str, list[Example]], list[Prompt], dict[str, list[Example]]]:
    """Each domain's rows, shuffled by ``data.split_seed``, carved into eval sets, public prompts and the rest.

    ``public``: the prompts already drawn (a resumed run, or a node given them by the server); their rows
    leave the domains as drawing them would have. ``node``: only the domains this machine can read, and
    always that client's own.
    """
    selections = _domain_selections(cfg)
    if node is not None:
        own = next((c.data.domain for c in cfg.clients if c.name == node and c.data is not None), None)
        selections = {d: s for d, s in selections.items() if d == own or _readable(s)}
    num, n_eval = cfg.public.num_prompts, cfg.data.eval_per_domain
    drawn = public is not None and not cfg.public.own  # drawn from the domains' rows, after the eval sets
    if public is None and cfg.public.own:
        public = _own_public(cfg)
    taken = {p.instruction.strip() for p in public} if public is not None and not drawn else set()
    rows = _drop_collisions({d: load_selection(s, cfg.data.max_chars) for d, s in selections.items()}, taken)
    rows = {d: _shuffled(examples, f"{cfg.data.split_seed}:{d}") for d, examples in rows.items()}

    eval_sets, rest = {}, {}
    for d, examples in rows.items():
        if split := selections[d].eval_split:  # the data set's own evaluation split; its instructions leave the rest
            other = selections[d].model_copy(update={"split": split, "eval_split": None})
            eval_sets[d] = _shuffled(load_selection(other, cfg.data.max_chars), f"{cfg.data.split_seed}:{d}")[:n_eval]
            held = {e.instruction.strip() for e in eval_sets[d]}
            rest[d] = [e for e in examples if e.instruction.strip() not in held]
        else:
            eval_sets[d], rest[d] = examples[:n_eval], examples[n_eval:]
        if len(eval_sets[d]) < n_eval:
            log.warning("domain %s: only %d eval examples (eval_per_domain=%d)", d, len(eval_sets[d]), n_eval)

    if not cfg.public.own:  # the pool leaves the domains whatever the budget, so the private rows never depend on it
        quota = _pool(cfg, rest)
        pool = _round_robin({d: rest[d][:quota[d]] for d in rest})
        rest = {d: rest[d][quota[d]:] for d in rest}
        if drawn:  # as drawn before (the data may have changed since): those rows leave too
            texts = {p.instruction for p in public}
            rest = {d: [e for e in examples if e.instruction not in texts] for d, examples in rest.items()}
        else:
            public = _with_fishing(cfg, pool)
    if len(public) < cfg.public.drawn(cfg.rounds):
        where = "file" if cfg.public.path else "public data" if cfg.public.data else "pool (public.pool)"
        if cfg.public.per_round == "fresh":
            raise DataError(f"public.per_round=fresh: {cfg.rounds} rounds of public.num_prompts={num} need "
                            f"{cfg.public.drawn(cfg.rounds)} prompts, the {where} holds {len(public)}")
        log.warning("public prompt set has %d prompts, fewer than public.num_prompts=%d", len(public), num)
    return eval_sets, public, rest


def _own_public(cfg: RunConfig) -> list[Prompt]:
    """The prompts of ``public.path`` (in file order), or of ``public.data`` (drawn by ``data.split_seed``, each
    keeping its response as the server's reference)."""
    if cfg.public.path is not None:
        return _with_fishing(cfg, read_prompts(cfg.public.path))
    rows = _shuffled(load_selection(cfg.public.data, cfg.data.max_chars), f"{cfg.data.split_seed}:public")
    return _with_fishing(cfg, [Prompt(f"p{i:04d}", e.instruction, e.domain, e.response) for i, e in enumerate(rows)])


def _with_fishing(cfg: RunConfig, candidates: list[Prompt]) -> list[Prompt]:
    """The run's public prompts out of ``candidates`` (in order): the first ``public.drawn`` of them, or under
    ``privacy.fishing`` the prompts that fish for the run's canaries and then as many candidates as are left."""
    num = cfg.public.drawn(cfg.rounds)
    if not cfg.privacy.fishing:
        return candidates[:num]
    fishing = fishing_prompts(canaries(cfg.privacy.canaries, cfg.seed))
    if len(fishing) > num:
        raise DataError(f"privacy.fishing: {cfg.privacy.canaries} canaries make {len(fishing)} fishing prompts, "
                        f"more than public.num_prompts={num}")
    return fishing + candidates[:num - len(fishing)]


def public_prompts(cfg: RunConfig) -> list[Prompt]:
    """The run's public prompts alone, as ``build_splits`` draws them, without partitioning private data:
    those of ``public.path`` or ``public.data`` when given (then no client's data is read), else held out
    from the domains' rows."""
    if cfg.public.own:
        return _own_public(cfg)
    return _carve(cfg)[1]


def build_splits(cfg: RunConfig, public: list[Prompt] | None = None, node: str | None = None) -> Splits:
    """Split the run's data into private sets per client, the public prompt set and eval sets per domain.

    Each domain's rows are shuffled with ``random.Random(f"{data.split_seed}:{domain}")`` and carved in order
    into eval, public candidates (only without ``public.path`` or ``public.data``) and the private pool, which the run's
    ``seed`` shuffles again (``f"{seed}:{domain}:private"``): runs with different seeds are evaluated on
    the same items and answer the same public prompts. No row is in two places and no instruction is in
    two domains or equals a public prompt.

    ``node`` (a Flower node holding that client): only its own data file is needed. Its private rows are
    those of the whole split; eval sets exist for the domains it can read (embedded ones, and files present
    here). Instructions shared with a domain it cannot read are not dropped, as it cannot see them.

    Raises:
        DataError: bad data, or a client asking for more private rows than its domain has left.
    """
    eval_sets, public, rest = _carve(cfg, public, node)
    rest = {d: _shuffled(examples, f"{cfg.seed}:{d}:private") for d, examples in rest.items()}
    by_category = cfg.data.partition == "category"
    members = cfg.clients
    if node is not None and len(rest) < len(_domain_selections(cfg)):
        if not by_category:
            raise DataError(f"partition={_partition_name(cfg)} pools every client's data, so node {node!r} needs "
                            "all data files; use partition=category where each node holds only its own")
        members = [c for c in cfg.clients if c.data.domain in rest]
    private = _partitioner(cfg)(cfg, rest, members)
    client_domain = {c.name: c.data.domain if by_category else MIXED for c in members}
    splits = Splits(private, public, eval_sets, client_domain)
    _check_unique_ids(splits)
    log.info("splits: %d public prompts; eval %s; private %s", len(public),
             ", ".join(f"{d}={len(e)}" for d, e in eval_sets.items()),
             ", ".join(f"{c}={len(e)}" for c, e in private.items()))
    return splits


def experts_of(cfg: RunConfig, splits: Splits | None = None) -> dict[str, str]:
    """Each domain's expert, for measurement only (the oracle bound and the expert share of the labels): the
    client whose private domain it is (partition=category, the first such client), else the client holding the
    most private rows of that domain (ties to the first in config order; needs ``splits``)."""
    if cfg.data.partition == "category":
        experts: dict[str, str] = {}
        for c in cfg.clients:
            experts.setdefault(c.data.domain, c.name)
        return experts
    if splits is None:
        return {}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, rows in splits.private.items():
        for ex in rows:
            counts[ex.domain][name] += 1
    order = {c.name: i for i, c in enumerate(cfg.clients)}
    return {d: max(per, key=lambda n: (per[n], -order[n])) for d, per in sorted(counts.items())}
