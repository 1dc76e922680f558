"""Tests of semcon.data: JSONL validation, the embedded sources, and deterministic disjoint splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semcon.config import ConfigError, DataSelection, load_config
from semcon.data import (DataError, Example, Prompt, build_splits, load_selection, public_prompts, read_jsonl,
                         read_prompts)

BIG = 10**9  # max_chars that keeps every row


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (objects, or raw strings written as they are) one per line."""
    lines = (r if isinstance(r, str) else json.dumps(r) for r in rows)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def qa_rows(n: int, tag: str, category: str | None = None) -> list[dict]:
    """``n`` distinct instruction/response rows."""
    rows = [{"instruction": f"{tag} question {i}?", "response": f"{tag} answer {i}."} for i in range(n)]
    if category:
        for r in rows:
            r["category"] = category
    return rows


def config(clients: list[dict], partition: str = "category", seed: int = 0, check_files: bool = True, **sections):
    """A RunConfig from a dict, as a user's YAML would give it."""
    tree = {"seed": seed, "clients": clients, "data": {"partition": partition, "examples_per_client": 20,
                                                        "eval_per_domain": 8, **sections.pop("data", {})},
            "public": {"num_prompts": 12, **sections.pop("public", {})}, **sections}
    return load_config(tree=tree, check_files=check_files)


def instructions(examples) -> list[str]:
    return [e.instruction for e in examples]


def assert_disjoint(splits) -> None:
    """No instruction is in two of: any client's private set, the public set, any eval set."""
    groups = {f"private:{c}": instructions(e) for c, e in splits.private.items()}
    groups["public"] = instructions(splits.public)
    groups |= {f"eval:{d}": instructions(e) for d, e in splits.eval.items()}
    owner: dict[str, str] = {}
    for name, texts in groups.items():
        assert len(set(texts)) == len(texts), f"repeated instruction inside {name}"
        for t in texts:
            assert t not in owner, f"{t[:60]!r} is in {owner[t]} and {name}"
            owner[t] = name
    ids = [e.id for es in [*splits.private.values(), *splits.eval.values()] for e in es]
    assert len(set(ids)) == len(ids)


def fingerprint(splits) -> tuple:
    """Everything that identifies a split, for equality checks."""
    return (
        {c: [e.id for e in es] for c, es in splits.private.items()},
        [(p.id, p.instruction) for p in splits.public],
        {d: [e.id for e in es] for d, es in splits.eval.items()},
        splits.client_domain,
    )


# ---------------------------------------------------------------- JSONL


@pytest.mark.parametrize(("lines", "bad_line", "reason"), [
    (['{"instruction": "a", "response": "b"}', '{"instruction": "c", "response": '], 2, "invalid JSON"),
    (['["a", "b"]'], 1, "expected a JSON object, got list"),
    (['{"instruction": "a", "response": "b"}', "", '{"response": "b"}'], 3, "missing 'instruction'"),
    (['{"instruction": "a"}'], 1, "missing 'response'"),
    (['{"instruction": "a", "response": "  "}'], 1, "'response' is empty"),
    (['{"instruction": "", "response": "b"}'], 1, "'instruction' is empty"),
    (['{"instruction": 3, "response": "b"}'], 1, "'instruction' must be a string, got int"),
    (['{"instruction": "a", "response": "b", "category": 7}'], 1, "'category' must be a string"),
    (['{"instruction": "a", "response": "b", "task": "essay"}'], 1, "unknown 'task' 'essay'"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": ["x"], "answer": "A"}'], 1,
     "'choices', a list of 2 to 10 strings"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": "xy", "answer": "A"}'], 1, "'choices', a list"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": ["x", " "], "answer": "A"}'], 1,
     "non-empty string"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": ["x", 2], "answer": "A"}'], 1,
     "non-empty string"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": ["x", "y"], "answer": "C"}'], 1,
     "'answer', one of the letters A, B"),
    (['{"instruction": "a", "task": "multiple_choice", "choices": ["x", "y"]}'], 1, "'answer'"),
    (['{"instruction": "a", "response": "about ten", "task": "numeric"}'], 1, "must contain its final number"),
    (['{"instruction": "a", "task": "numeric"}'], 1, "missing 'response'"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, lines, bad_line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{bad_line}: ") and reason in msg
    assert "\n" not in msg


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_jsonl_with_and_without_category(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"instruction": "Q1", "response": "A1", "category": "cats"},
        {"instruction": "Q2", "response": "A2"},
        "",
        {"instruction": "Q1", "response": "repeated instruction, dropped"},
        {"instruction": "Q3", "response": "A3", "category": None, "extra": 1},
    ])
    assert len(read_jsonl(path)) == 4
    examples = load_selection(DataSelection(source="jsonl", path=path), BIG)
    assert [(e.id, e.category) for e in examples] == [("mine:1", "cats"), ("mine:2", "default"),
                                                       ("mine:5", "default")]
    assert all(e.domain == "mine" for e in examples)
    cats = load_selection(DataSelection(source="jsonl", path=path, categories=["cats"]), BIG)
    assert [e.response for e in cats] == ["A1"]


def test_jsonl_tasks(tmp_path):
    path = write_jsonl(tmp_path / "mmlu_x.jsonl", [
        {"instruction": "Capital of France?", "task": "multiple_choice", "choices": ["Rome", "Paris", "Oslo"],
         "answer": "B", "category": "geo"},
        {"instruction": "2 + 2?", "response": "2 + 2 = 4", "task": "numeric"},
        {"instruction": "Say hi.", "response": "Hi.", "task": "generative"},
        {"instruction": "Say bye.", "response": "Bye.", "task": None},
    ])
    mc, num, gen, gen2 = load_selection(DataSelection(source="jsonl", path=path), BIG)
    assert (mc.task, mc.question, mc.choices, mc.response) == ("multiple_choice", "Capital of France?",
                                                                 ("Rome", "Paris", "Oslo"), "B. Paris")
    assert mc.instruction == ("Capital of France?\nA. Rome\nB. Paris\nC. Oslo\n"
                              "Answer with the letter of the correct option.")
    assert (num.task, gen.task, gen2.task) == ("numeric", "generative", "generative")
    assert gen.question == "" and gen.choices == ()


def test_read_jsonl_sees_edits(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(2, "x"))
    assert len(read_jsonl(path)) == 2
    write_jsonl(path, qa_rows(3, "x"))
    assert len(read_jsonl(path)) == 3


def test_read_prompts(tmp_path):
    rows = [{"instruction": "Hi?"}, {"instruction": "Yo?", "id": "custom"}, {"instruction": "Hi?"},
            {"instruction": "Why?"}]
    path = write_jsonl(tmp_path / "pub.jsonl", rows)
    assert read_prompts(path) == [Prompt("p0000", "Hi?", "public"), Prompt("custom", "Yo?", "public"),
                                  Prompt("p0002", "Why?", "public")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a"}, {"id": "x"}])
    with pytest.raises(DataError, match=rf"^{bad}:2: missing 'instruction'"):
        read_prompts(bad)


def test_trl_conversational_and_prompt_completion_rows_are_instruction_response_rows(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Dose of X?"}, {"role": "assistant", "content": "10 mg."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Because."}], "category": "c"},
        {"prompt": "Capital of France?", "completion": "Paris."},
        {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]},
    ]
    got = read_jsonl(write_jsonl(tmp_path / "trl.jsonl", rows))
    assert [(r["instruction"], r["response"]) for r in got] == [
        ("Dose of X?", "10 mg."), ("Be brief.\n\nWhy?", "Because."), ("Capital of France?", "Paris."), ("2+2?", "4")]
    assert got[1]["category"] == "c" and "messages" not in got[1]
    two_turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
    for bad, reason in (({"messages": two_turns}, "only single-turn conversations"),
                        ({"messages": [{"role": "user"}]}, "messages[0] must be an object with string 'role' and"),
                        ({"messages": "hi"}, "'messages' must be a non-empty list"),
                        ({"prompt": "a", "completion": 3}, "'response' must be a string, got int")):
        path = write_jsonl(tmp_path / "bad.jsonl", [rows[0], bad])
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: {re.escape(reason)}"):
            read_jsonl(path)
    prompts = write_jsonl(tmp_path / "pub.jsonl", [{"prompt": "Hi?"}, {"messages": [{"role": "user", "content": "Yo?"}]}])
    assert [p.instruction for p in read_prompts(prompts)] == ["Hi?", "Yo?"]


# ---------------------------------------------------------------- embedded sources


@pytest.mark.parametrize(("source", "low", "high", "n_categories"), [
    ("gsm8k", 1319, 1319, 1),
    ("humaneval", 164, 164, 1),
    ("wiki", 10_000, 10_033, 12),
    ("mmlu", 13_900, 14_042, 57),
    ("chatterbot", 700, 2_026, 21),  # most tech_support pairs repeat an instruction
])
def test_embedded_source_sizes(source, low, high, n_categories):
    examples = load_selection(DataSelection(source=source), BIG)
    assert low <= len(examples) <= high
    assert len({e.category for e in examples}) == n_categories
    assert len({e.id for e in examples}) == len(examples)
    assert len({e.instruction for e in examples}) == len(examples)
    assert all(e.instruction.strip() and e.response.strip() and e.domain == source for e in examples)


def test_embedded_formats():
    wiki = load_selection(DataSelection(source="wiki", categories=["Geography"]), BIG)
    assert wiki[0].instruction.startswith("Tell me about ") and wiki[0].id.startswith("wiki:Geography:")
    mmlu = load_selection(DataSelection(source="mmlu", categories=["astronomy"]), BIG)
    e = mmlu[0]
    assert e.instruction.endswith("\nAnswer with the letter of the correct option.")
    letter = e.response[0]
    assert letter in "ABCD" and e.response.startswith(f"{letter}. ")
    assert f"\n{letter}. {e.response[3:]}\n" in e.instruction
    assert e.task == "multiple_choice" and len(e.choices) == 4
    assert e.choices["ABCD".index(letter)] == e.response[3:]
    assert e.instruction.startswith(e.question + "\nA. " + e.choices[0] + "\n")
    code = load_selection(DataSelection(source="humaneval"), BIG)[0]
    assert code.instruction.startswith("Complete this Python function:\n") and code.category == "code"
    assert code.task == "generative" and wiki[0].task == "generative"
    assert {e.task for e in load_selection(DataSelection(source="gsm8k"), BIG)} == {"numeric"}


def test_task_follows_the_source_not_the_label():
    medicine = load_selection(DataSelection(source="mmlu", categories=["anatomy"], name="medicine"), BIG)
    assert {(e.domain, e.task) for e in medicine} == {("medicine", "multiple_choice")}


def test_category_filter_and_unknown_category():
    geo = load_selection(DataSelection(source="wiki", categories=["Geography", "Mathematics"]), BIG)
    assert {e.category for e in geo} == {"Geography", "Mathematics"}
    assert 1300 < len(geo) < 1400
    assert {e.domain for e in geo} == {"wiki:Geography+Mathematics"}
    with pytest.raises(DataError) as err:
        load_selection(DataSelection(source="wiki", categories=["Geography", "Astrology"]), BIG)
    msg = str(err.value)
    assert "'wiki'" in msg and "'Astrology'" in msg
    assert "available: Arts, Biology and health sciences, Everyday life, Geography" in msg


def test_max_chars_drops_long_rows():
    short = load_selection(DataSelection(source="gsm8k"), 400)
    assert 0 < len(short) < 1319
    assert all(len(e.instruction) + len(e.response) <= 400 for e in short)
    with pytest.raises(DataError, match="max_chars=10"):
        load_selection(DataSelection(source="gsm8k"), 10)


# ---------------------------------------------------------------- splits

CLIENTS = {
    "category": [{"name": "geo", "data": {"source": "wiki", "categories": ["Geography"]}},
                 {"name": "math", "data": {"source": "gsm8k"}},
                 {"name": "math2", "data": {"source": "gsm8k"}, "num_examples": 7},
                 {"name": "code", "data": {"source": "humaneval"}}],
    "iid": [{"name": "a", "data": {"source": "gsm8k"}}, {"name": "b", "data": {"source": "humaneval"}},
            {"name": "c"}],
    "dirichlet": [{"name": "a", "data": {"source": "wiki", "categories": ["Mathematics", "History"]}},
                  {"name": "b", "data": {"source": "chatterbot"}}, {"name": "c", "num_examples": 5}],
}


@pytest.mark.parametrize("partition", list(CLIENTS))
def test_splits_are_deterministic_and_disjoint(partition):
    clients = CLIENTS[partition]
    first = build_splits(config(clients, partition, seed=3))
    assert_disjoint(first)
    assert fingerprint(build_splits(config(clients, partition, seed=3))) == fingerprint(first)
    other = build_splits(config(clients, partition, seed=4))
    assert_disjoint(other)
    assert fingerprint(other) != fingerprint(first)


@pytest.mark.parametrize("partition", list(CLIENTS))
def test_split_counts_match_config(partition):
    cfg = config(CLIENTS[partition], partition)
    splits = build_splits(cfg)
    assert {c: len(e) for c, e in splits.private.items()} == {
        c.name: c.num_examples or 20 for c in cfg.clients}
    assert [p.id for p in splits.public] == [f"p{i:04d}" for i in range(12)]
    domains = sorted({c.data.domain for c in cfg.clients if c.data})
    assert sorted(splits.eval) == domains
    assert all(len(e) == 8 for e in splits.eval.values())
    assert {p.domain for p in splits.public} == set(domains)  # round-robin over every domain
    for d, examples in splits.eval.items():
        assert all(e.domain == d for e in examples)
    expected = {c.name: c.data.domain for c in cfg.clients} if partition == "category" else \
        dict.fromkeys((c.name for c in cfg.clients), "mixed")
    assert splits.client_domain == expected
    if partition == "category":
        for c in cfg.clients:
            assert all(e.domain == c.data.domain for e in splits.private[c.name])


@pytest.mark.parametrize("partition", list(CLIENTS))
def test_seeds_share_eval_sets_and_public_prompts(partition):
    clients = CLIENTS[partition]
    a = build_splits(config(clients, partition, seed=3, data={"split_seed": 7}))
    b = build_splits(config(clients, partition, seed=4, data={"split_seed": 7}))
    assert a.public == b.public
    assert fingerprint(a)[2] == fingerprint(b)[2]  # the eval sets
    assert fingerprint(a)[0] != fingerprint(b)[0]
    assert {e.id for es in a.private.values() for e in es} != {e.id for es in b.private.values() for e in es}
    c = build_splits(config(clients, partition, seed=3, data={"split_seed": 8}))
    assert fingerprint(c)[2] != fingerprint(a)[2]


@pytest.mark.parametrize("partition", list(CLIENTS))
def test_the_public_prompts_alone_are_those_of_the_whole_split(partition):
    """What a Flower server draws without partitioning anyone's private data."""
    cfg = config(CLIENTS[partition], partition)
    assert public_prompts(cfg) == build_splits(cfg).public


@pytest.mark.parametrize("partition", list(CLIENTS))
def test_the_public_budget_moves_no_private_or_evaluation_row(partition):
    small = build_splits(config(CLIENTS[partition], partition, public={"num_prompts": 4}))
    large = build_splits(config(CLIENTS[partition], partition, public={"num_prompts": 40}))
    assert fingerprint(small)[0] == fingerprint(large)[0] and fingerprint(small)[2] == fingerprint(large)[2]
    assert large.public[:4] == small.public and len(large.public) == 40
    fresh = build_splits(config(CLIENTS[partition], partition, rounds=3, public={"num_prompts": 4, "per_round": "fresh"}))
    assert fingerprint(fresh)[0] == fingerprint(small)[0] and fresh.public == large.public[:12]


def test_fishing_prompts_come_first_and_move_no_private_or_evaluation_row():
    """A fishing coordinator asks for the canaries in the first public prompts; the domains supply the rest, and no
    private or evaluation row moves (the audit compares runs with and without it)."""
    from semcon.data.canaries import FISHING, canaries, fishing_prompts

    privacy = {"canaries": 2, "client": "geo"}
    plain = build_splits(config(CLIENTS["category"], privacy=privacy))
    fishing = build_splits(config(CLIENTS["category"], seed=5, privacy={**privacy, "fishing": True}))
    assert fishing.public[:10] == fishing_prompts(canaries(2, 5)) and {p.domain for p in fishing.public[:10]} == {FISHING}
    assert fishing.public[10:] == plain.public[:2] and len(fishing.public) == 12
    assert fingerprint(fishing)[2] == fingerprint(plain)[2]
    assert fingerprint(fishing)[0] == fingerprint(build_splits(config(CLIENTS["category"], seed=5, privacy=privacy)))[0]
    assert public_prompts(config(CLIENTS["category"], seed=5, privacy={**privacy, "fishing": True})) == fishing.public
    with pytest.raises(DataError, match="privacy.fishing: 4 canaries make 16 fishing prompts, more than public.num_prompts=12"):
        build_splits(config(CLIENTS["category"], privacy={"canaries": 4, "fishing": True}))
    for bad in ({"fishing": True}, {**privacy, "fishing": True, "public": "fresh"}):
        sections = {"public": {"per_round": "fresh"}} if bad.pop("public", None) else {}
        with pytest.raises(ConfigError, match="privacy.fishing needs privacy.canaries > 0 and public.per_round: fixed"):
            config(CLIENTS["category"], privacy=bad, **sections)


def test_the_default_pool_is_what_the_domain_that_can_spare_fewest_can_spare():
    sizes = {d: len(load_selection(DataSelection(**sel), 2000)) for d, sel in (
        ("wiki:Geography", {"source": "wiki", "categories": ["Geography"]}), ("gsm8k", {"source": "gsm8k"}),
        ("humaneval", {"source": "humaneval"}))}
    need = {"wiki:Geography": 20, "gsm8k": 20 + 7, "humaneval": 20}  # each domain's clients' private rows
    least = min(sizes[d] - 8 - need[d] for d in sizes)  # after 8 eval rows
    whole = build_splits(config(CLIENTS["category"], public={"num_prompts": 3 * least}))
    assert fingerprint(whole)[0] == fingerprint(build_splits(config(CLIENTS["category"])))[0]
    assert {d: sum(p.domain == d for p in whole.public) for d in sizes} == dict.fromkeys(sizes, least)


def test_fresh_prompts_each_round_need_a_pool_that_holds_them():
    from semcon.config import PublicConfig

    cfg = PublicConfig(num_prompts=2, per_round="fresh")
    assert cfg.asked(list("abcdef"), 1) == ["a", "b"] and cfg.asked(list("abcdef"), 3) == ["e", "f"]
    assert PublicConfig(num_prompts=2).asked(list("abcdef"), 3) == ["a", "b"]
    with pytest.raises(DataError, match="3 rounds of public.num_prompts=8 need 24 prompts, the pool"):
        build_splits(config(CLIENTS["category"], rounds=3, public={"num_prompts": 8, "per_round": "fresh", "pool": 20}))


def test_public_prompts_keep_their_reference_on_the_server():
    splits = build_splits(config(CLIENTS["category"]))
    responses = {e.instruction: e.response for c in CLIENTS["category"]
                 for e in load_selection(DataSelection(**c["data"]), 2000)}
    assert all(p.reference is not None and p.reference == responses[p.instruction] for p in splits.public)


def test_iid_mixes_domains():
    splits = build_splits(config(CLIENTS["iid"], "iid", data={"examples_per_client": 60}))
    for examples in splits.private.values():
        assert {e.domain for e in examples} == {"gsm8k", "humaneval"}


def test_running_out_of_data_names_the_client():
    # humaneval has 164 rows: 8 eval + 6 public leave 150 private
    clients = [{"name": "coder", "data": {"source": "humaneval"}, "num_examples": 100},
               {"name": "greedy", "data": {"source": "humaneval"}, "num_examples": 60},
               {"name": "math", "data": {"source": "gsm8k"}}]
    with pytest.raises(DataError) as err:
        build_splits(config(clients, data={"max_chars": BIG}))
    msg = str(err.value)
    assert "'greedy'" in msg and "'humaneval'" in msg and "50 private rows left" in msg
    # iid, one domain: 8 eval + 12 public leave 144
    clients = [{"name": "a", "data": {"source": "humaneval"}, "num_examples": 144}, {"name": "b"}]
    with pytest.raises(DataError, match="'b'.*humaneval.*has 0 private rows left"):
        build_splits(config(clients, "iid", data={"max_chars": BIG}))


def test_public_file_prompts_are_kept_out_of_private_and_eval(tmp_path):
    gsm = load_selection(DataSelection(source="gsm8k"), BIG)
    mine = write_jsonl(tmp_path / "mine.jsonl", qa_rows(40, "mine"))
    public = write_jsonl(tmp_path / "pub.jsonl", [{"instruction": e.instruction} for e in gsm[:300]]
                         + [{"instruction": "mine question 3?"}])
    clients = [{"name": "m", "data": {"source": "gsm8k"}},
               {"name": "j", "data": {"source": "jsonl", "path": str(mine)}}]
    splits = build_splits(config(clients, public={"path": str(public), "num_prompts": 301}))
    assert len(splits.public) == 301 and splits.public[-1].instruction == "mine question 3?"
    assert_disjoint(splits)
    assert {p.domain for p in splits.public} == {"public"}
    assert {p.reference for p in splits.public} == {None}


def test_clients_sharing_a_domain_get_disjoint_slices():
    clients = [{"name": f"c{i}", "data": {"source": "gsm8k"}} for i in range(3)]
    splits = build_splits(config(clients))
    assert_disjoint(splits)
    assert sorted(splits.eval) == ["gsm8k"]


def test_two_domains_with_one_label_is_an_error(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(50, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(50, "b"))
    clients = [{"name": "x", "data": {"source": "jsonl", "path": str(a), "name": "same"}},
               {"name": "y", "data": {"source": "jsonl", "path": str(b), "name": "same"}}]
    with pytest.raises(DataError, match="'x' and 'y'.*'same'"):
        build_splits(config(clients))


def test_overlapping_selections_stay_disjoint():
    clients = [{"name": "all", "data": {"source": "wiki", "categories": ["Mathematics", "History"]}},
               {"name": "maths", "data": {"source": "wiki", "categories": ["Mathematics"]}}]
    splits = build_splits(config(clients))
    assert_disjoint(splits)
    assert isinstance(splits.private["maths"][0], Example)


def test_a_node_needs_only_its_own_data_file(tmp_path):
    """A Flower node rebuilds its client's split from its own file and the server's public prompts: the same
    private rows as the whole split, eval sets for what it can read, and no need for the others' files."""
    clinic = write_jsonl(tmp_path / "clinic.jsonl", qa_rows(60, "clinic"))
    bank = write_jsonl(tmp_path / "bank.jsonl", qa_rows(60, "bank"))
    clients = [{"name": "clinic", "data": {"source": "jsonl", "path": str(clinic)}},
               {"name": "bank", "data": {"source": "jsonl", "path": str(bank)}},
               {"name": "math", "data": {"source": "gsm8k"}}]
    whole = build_splits(config(clients))
    sent = [Prompt(p.id, p.instruction, "public") for p in whole.public]  # what the server sends: no references
    bank.rename(tmp_path / "elsewhere.jsonl")  # the bank's file lives on another machine
    cfg = config(clients, check_files=False)
    for name, readable in (("clinic", {"clinic", "gsm8k"}), ("math", {"clinic", "gsm8k"})):
        node = build_splits(cfg, sent, node=name)
        assert list(node.private) == [c["name"] for c in clients if c["name"] != "bank"]
        assert node.private[name] == whole.private[name]
        assert set(node.eval) == readable and all(node.eval[d] == whole.eval[d] for d in readable)
    with pytest.raises(DataError, match="bank.jsonl: file not found"):
        build_splits(cfg, sent, node="bank")
    with pytest.raises(ConfigError, match="clients.1.data.path: file not found"):
        config(clients)


def test_a_node_of_a_pooled_partition_needs_every_file(tmp_path):
    mine, theirs = write_jsonl(tmp_path / "mine.jsonl", qa_rows(80, "mine")), tmp_path / "theirs.jsonl"
    clients = [{"name": "a", "data": {"source": "jsonl", "path": str(mine)}},
               {"name": "b", "data": {"source": "jsonl", "path": str(theirs)}}]
    with pytest.raises(DataError, match="partition=iid pools every client's data"):
        build_splits(config(clients, "iid", check_files=False, public={"num_prompts": 4}), node="a")


def test_given_public_prompts_leave_the_same_split_as_drawing_them():
    """A resumed run reads its prompts back from the run directory instead of drawing them again."""
    for partition, clients in CLIENTS.items():
        cfg = config(clients, partition)
        drawn = build_splits(cfg)
        assert fingerprint(build_splits(cfg, drawn.public)) == fingerprint(drawn)


# ---------------------------------------------------------------- Flower Datasets' partitioners

FLOWER = {"partitioner": "dirichlet", "by": "category", "alpha": 0.5}


def test_flower_partitioners_split_deterministically_and_disjointly():
    clients = CLIENTS["dirichlet"]
    for spec in (FLOWER, {"partitioner": "iid"}):
        first = build_splits(config(clients, spec, seed=3))
        assert_disjoint(first)
        assert fingerprint(build_splits(config(clients, spec, seed=3))) == fingerprint(first)
        assert fingerprint(build_splits(config(clients, spec, seed=4)))[0] != fingerprint(first)[0]
        assert all(0 < len(rows) <= 20 for rows in first.private.values())


def test_flower_iid_equals_semcons_iid_when_the_shards_fill_the_pool(tmp_path):
    """semcon deals consecutive slices of the shuffled pool; Flower's IidPartitioner contiguous shards of it."""
    files = [write_jsonl(tmp_path / f"{d}.jsonl", qa_rows(50, d)) for d in ("clinic", "bank")]
    clients = [{"name": f"c{i}", "data": {"source": "jsonl", "path": str(files[i % 2])}} for i in range(4)]
    # 2 x (50 - 8 eval - 6 public) = 72 pooled rows = 4 clients x 18
    ours = build_splits(config(clients, "iid", data={"examples_per_client": 18}))
    theirs = build_splits(config(clients, {"partitioner": "iid"}, data={"examples_per_client": 18}))
    assert fingerprint(ours) == fingerprint(theirs)


def test_flower_natural_id_by_domain_gives_each_client_its_domain_as_category_does(tmp_path):
    files = [write_jsonl(tmp_path / f"{d}.jsonl", qa_rows(50, d)) for d in ("clinic", "bank", "court")]
    clients = [{"name": f"org{i}", "data": {"source": "jsonl", "path": str(f)}} for i, f in enumerate(files[::-1])]
    by_domain = {"partitioner": "natural_id", "by": "domain"}  # the groups sort as bank, clinic, court
    # each client asks for all its domain's private rows: 50 - 8 eval - 4 public
    ours = build_splits(config(clients, "category", data={"examples_per_client": 38}))
    theirs = build_splits(config(clients, by_domain, data={"examples_per_client": 38}))
    assert {e.domain for e in theirs.private["org0"]} == {"court"}
    assert {c: {e.id for e in rows} for c, rows in ours.private.items()} == \
        {c: {e.id for e in rows} for c, rows in theirs.private.items()}
    with pytest.raises(DataError, match="natural_id: natural_id by domain makes 3 partitions, one per domain, "
                                        "for 4 clients"):
        build_splits(config([*clients, {"name": "extra"}], by_domain))


def test_flower_dirichlet_draws_the_shares_semcons_dirichlet_draws():
    """Same seed, same groups in the same order: the same Dirichlet proportions; the counts differ by at most one
    row per group and client (semcon rounds the cut points, Flower floors them)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    from semcon.data.splits import _dirichlet_shares

    groups = [list(range(k * 100, k * 100 + n)) for k, n in enumerate((40, 25, 33, 60))]
    ours = _dirichlet_shares(groups, 5, 0.5, seed=7)
    flower = DirichletPartitioner(5, "group", 0.5, min_partition_size=0, seed=7)
    flower.dataset = Dataset.from_dict({"row": [r for g in groups for r in g],
                                        "group": [f"g{k}" for k, g in enumerate(groups) for _ in g]})
    theirs = [flower.load_partition(i)["row"] for i in range(5)]
    for k in range(len(groups)):
        counts = [[sum(r // 100 == k for r in share) for share in shares] for shares in (ours, theirs)]
        assert max(abs(a - b) for a, b in zip(*counts)) <= 1, counts
    assert [sum(r // 100 == 0 for r in s) for s in ours] != [8, 8, 8, 8, 8]  # not an even split


def test_an_unknown_flower_partitioner_is_one_line():
    with pytest.raises(ConfigError, match=r"data.partition.*partitioner"):
        config(CLIENTS["dirichlet"], {"partitioner": "shards"})
