import re
from pathlib import Path

import pytest
import yaml

from semcon.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_says_how_to_run_it(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().startswith("# "), "every shipped YAML starts with a comment giving its command"


def test_public_override_keys():
    cfg = load_config(ROOT / "configs/demo.yaml", [
        "rounds=3", "seed=7", "public.num_prompts=5", "generate.max_new_tokens=12", "train.steps=1",
        "clients=[{name: a, model: smollm2-135m, data: {source: gsm8k}}]", "clients.0.data.source=wiki",
    ])
    assert (cfg.rounds, cfg.seed, cfg.public.num_prompts, cfg.generate.max_new_tokens, cfg.train.steps) == (3, 7, 5, 12, 1)
    assert [c.name for c in cfg.clients] == ["a"] and cfg.clients[0].data.source == "wiki"


@pytest.mark.parametrize("override, needle", [
    (["train.stepz=3"], "train.stepz: unknown key"),
    (["rounds=many"], "rounds: Input should be a valid integer"),
    (["public.num_prompts=0"], "public.num_prompts: Input should be greater than 0"),
    (["clients.5.name=x"], "not an index"),
    (["noequals"], "not key=value"),
    (["clients.0.data.source=nope"], "clients.0.data.source"),
    (["clients.1.name=geography"], "client names must be unique"),
    (["clients.0.data.path=x.jsonl"], "'path' only applies to sources jsonl and hf"),
])
def test_bad_overrides_give_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/demo.yaml", override)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ invalid YAML"):
        load_config(bad)
    missing_data = tmp_path / "m.yaml"
    missing_data.write_text(yaml.safe_dump({"clients": [{"name": "a", "data": {"source": "jsonl", "path": "no.jsonl"}}]}))
    with pytest.raises(ConfigError, match=r"clients.0.data.path: file not found"):
        load_config(missing_data)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml", ["seed=3"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    assert load_config(path) == cfg


def test_overrides_leave_the_callers_tree_as_it_was():
    tree = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    before = yaml.safe_dump(tree)
    cfg = load_config(tree=tree, overrides=["train.steps=1", "clients.0.data.source=gsm8k", "data.eval_per_domain=2"])
    assert cfg.train.steps == 1 and cfg.clients[0].data.source == "gsm8k"
    assert yaml.safe_dump(tree) == before  # nested sections untouched


def test_a_client_template_declares_many_clients():
    cfg = load_config(tree={
        "clients": {"count": 100, "name": "org{i:03d}", "model": "smollm2-135m", "lr": 1e-3,
                    "data": [{"source": "wiki", "categories": ["Geography"]}, {"source": "gsm8k"}]},
        "data": {"partition": "dirichlet"}, "clients_per_round": 0.1})
    assert [c.name for c in cfg.clients[:3]] == ["org000", "org001", "org002"] and len(cfg.clients) == 100
    assert [c.data.source for c in cfg.clients[:4]] == ["wiki", "gsm8k", "wiki", "gsm8k"]  # the domains in turn
    assert all(c.lr == 1e-3 and c.model == "smollm2-135m" for c in cfg.clients)
    assert cfg.per_round == 10 and cfg.needed_clients == 6  # a majority of each round's cohort
    again = load_config(tree=yaml.safe_load(cfg.dump()))  # the resolved config lists every client
    assert [c.name for c in again.clients] == [c.name for c in cfg.clients] and again.per_round == 10


@pytest.mark.parametrize("tree, needle", [
    ({"clients": {"count": 3, "name": "same", "data": {"source": "gsm8k"}}}, "clients.name: must contain {i}"),
    ({"clients": {"count": 0, "data": {"source": "gsm8k"}}}, "clients.count: Input should be greater than 0"),
    ({"clients": {"count": 3, "data": {"source": "gsm8k"}, "colour": "red"}}, "clients.colour: unknown key"),
    ({"clients": {"count": 3, "data": {"source": "gsm8k"}}, "clients_per_round": 4},
     "clients_per_round=4 exceeds the 3 clients"),
    ({"clients": {"count": 3, "data": {"source": "gsm8k"}}, "clients_per_round": 1.5},
     "clients_per_round: a fraction must be in (0, 1]"),
    ({"clients": {"count": 3, "data": {"source": "gsm8k"}}, "clients_per_round": 2, "min_clients": 3},
     "min_clients=3 exceeds the 2 clients of a round"),
])
def test_bad_templates_and_cohorts_are_one_line(tree, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(tree={"data": {"partition": "iid"}, **tree})


OLD_MEDOID = ROOT / "docs/results/study2/runs/dirichlet/data.partition=dirichlet+consensus.rule=medoid/semantic_consensus/seed-0"


def test_a_setting_the_rule_does_not_read_is_refused_unless_semcon_wrote_it():
    from semcon.rounds.rundir import RunDir

    one_line = "consensus.gate: rule 'medoid' does not read it"
    with pytest.raises(ConfigError, match=one_line):
        load_config(ROOT / "configs/demo.yaml", ["consensus.gate=0.7"])
    with pytest.raises(ConfigError, match="^--set consensus.gate=0.6: " + one_line):
        load_config(ROOT / "configs/study2.yaml", ["consensus.rule=medoid", "consensus.gate=0.6"])
    # a rule changed by an override leaves the file's settings of the other rule behind
    assert load_config(ROOT / "configs/study2.yaml", ["consensus.rule=medoid"]).consensus.gate == 0.5
    # a committed run folder written before the check (medoid with gate 0.75) still loads, for verify and replay
    assert yaml.safe_load((OLD_MEDOID / "config.yaml").read_text())["consensus"]["gate"] == 0.75
    with pytest.raises(ConfigError, match="rule 'medoid' does not read it"):
        load_config(OLD_MEDOID / "config.yaml", check_files=False)
    assert RunDir(OLD_MEDOID).config().consensus.rule == "medoid"


def test_every_consensus_setting_has_one_reader_and_a_member_gets_only_its_part():
    from semcon.config import SERVER, ConsensusConfig, MemberConsensus, member_tree, reader

    readers = {k: reader(ConsensusConfig, k) for k in ConsensusConfig.model_fields}
    assert readers["rule"] == readers["gate"] == SERVER and readers["competence"] == "member"
    member = ConsensusConfig(rule="gated", competence="knn", gate=0.75).member()
    assert isinstance(member, MemberConsensus) and not hasattr(member, "gate") and member.skip_own
    assert set(MemberConsensus.__dataclass_fields__) == {k for k, r in readers.items() if r != SERVER}
    # a member loads the run's config without the coordinator's rule, which it need not be able to import
    tree = load_config(ROOT / "configs/demo.yaml").model_dump(mode="json")
    tree["consensus"]["rule"] = "only_on_the_coordinator:rule"
    assert load_config(tree=member_tree(tree), check_files=False).consensus.rule == "medoid"
