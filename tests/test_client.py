"""A client's round of training under each schedule: mixed, additive (labels after local's private steps), and the
``local+`` control (extra private steps)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import tiny_tree


@pytest.fixture(scope="module")
def federation(tiny_llama_dir):
    """One tiny federation whose first client each test retrains from its fresh adapter."""
    from semcon.config import load_config
    from semcon.transport.assembly import assemble

    fed = assemble(load_config(tree=tiny_tree(str(tiny_llama_dir))))
    client = fed.clients[0]
    return fed, client.settings, {k: v.clone() for k, v in client.backbone.adapter_state(client.name).items()}


def trained(federation, labels: bool, rounds: int = 2, **train) -> tuple[str, list]:
    """The first client's adapter digest and training stats after ``rounds`` rounds from its fresh adapter with
    these ``train`` settings, with pseudo-labels for three short prompts from round 1 on when ``labels``."""
    from semcon.data import Prompt
    from semcon.protocol import Download

    fed, settings, fresh = federation
    client, stats = fed.clients[0], []
    prompts = [Prompt(f"q{i}", f"Short question {i}?", "public") for i in range(3)]
    client.settings = replace(settings, train=settings.train.model_copy(update=train))
    client.backbone.load_adapter_state(client.name, fresh)
    client.pseudo = None
    for t in range(rounds):
        if labels and t:
            client.pseudo = Download(t, {p.id: f"A short answer {k}." for k, p in enumerate(prompts)})
        stats.append(client.train(t, prompts))
    return client.adapter_digest(), stats


def test_additive_without_labels_is_local_bit_for_bit(federation):
    local, _ = trained(federation, labels=False)
    additive, stats = trained(federation, labels=False, schedule="additive", label_steps=3)
    assert additive == local
    assert [s.steps for s in stats] == [2, 2]  # no labels: no label steps


def test_additive_runs_local_private_steps_then_steps_over_the_labels_alone(federation):
    local, _ = trained(federation, labels=False, rounds=1)
    additive, stats = trained(federation, labels=True, schedule="additive", label_steps=3)
    mixed, mixed_stats = trained(federation, labels=True)
    assert [s.steps for s in stats] == [2, 2 + 3] and [s.steps for s in mixed_stats] == [2, 2]
    assert len({additive, mixed, local}) == 3
    # the first round has no labels: every schedule's round 0 is local's
    assert trained(federation, labels=True, rounds=1, schedule="additive", label_steps=3)[0] == local


def test_label_epochs_round_up_to_whole_batches(federation):
    _, stats = trained(federation, labels=True, schedule="additive", label_epochs=2.0)
    assert stats[1].steps == 2 + 2  # 3 labels, batches of 4: 2 passes are 2 steps


def test_extra_steps_add_private_steps_after_the_round(federation):
    local, _ = trained(federation, labels=False)
    plus, stats = trained(federation, labels=False, extra_steps=3)
    assert [s.steps for s in stats] == [2, 5] and plus != local  # from round 1 on, as the label steps
    additive, additive_stats = trained(federation, labels=True, schedule="additive", label_steps=3)
    assert sum(s.steps for s in stats) == sum(s.steps for s in additive_stats)  # local+ trains as much as additive
    assert all(len(s.losses) == s.steps and s.tokens > 0 for s in stats)


def test_local_plus_is_local_with_the_label_steps_as_extra_private_steps(tiny_llama_dir, tmp_path):
    import yaml

    from semcon.config import ConfigError
    from semcon.coordinator.algorithms import make_algorithm
    from semcon.studies.compare import method_config, parse_methods

    path = tmp_path / "c.yaml"
    tree = tiny_tree(str(tiny_llama_dir))
    tree["train"] |= {"schedule": "additive", "label_steps": 5}
    path.write_text(yaml.safe_dump(tree))
    cfg = method_config(path, [], "local+")
    assert (cfg.method, cfg.train.extra_steps) == ("local", 5)
    assert make_algorithm(cfg, []).name == "local+" and make_algorithm(method_config(path, [], "local"), []).name == "local"
    assert parse_methods("local,local+") == ["local", "local+"]
    with pytest.raises(ConfigError, match="set train.label_steps"):
        method_config(path, ["train.label_steps=null"], "local+")


@pytest.mark.parametrize(("rule", "expected"), [("gated", True), ("weighted_medoid", True), ("medoid", False)])
def test_skip_own_defaults_on_for_the_rules_that_read_competence(rule, expected):
    from semcon.config import ConsensusConfig

    cfg = ConsensusConfig(rule=rule, competence="knn")
    assert cfg.skip_own is expected
    assert ConsensusConfig(rule=rule, competence="knn", skip_own=not expected).skip_own is (not expected)
