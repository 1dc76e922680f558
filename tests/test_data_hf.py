"""Tests of semcon.data.hf (``source: hf``) on small data sets the tests write to disk, offline."""

from __future__ import annotations

import datasets
import pytest
from test_data import BIG, assert_disjoint, config

from semcon.config import ConfigError, DataSelection, load_config
from semcon.data import DataError, build_splits, load_selection


def table(n: int = 60) -> datasets.Dataset:
    """``n`` numeric question/answer rows in two topics, under column names of the data set's own choosing."""
    return datasets.Dataset.from_dict({"question": [f"What is {i} plus {i}?" for i in range(n)],
                                       "answer": [f"{i} + {i} = {2 * i}.\n#### {2 * i}" for i in range(n)],
                                       "topic": ["sums", "doubles"] * (n // 2)})


COLUMNS = {"instruction": "question", "response": "answer", "category": "topic"}


def saved(tmp_path, form: str):
    """The table in one of the forms ``source: hf`` reads; returns (path, split)."""
    ds = table()
    match form:
        case "save_to_disk":
            ds.save_to_disk(str(tmp_path / "disk"))
            return tmp_path / "disk", "train"
        case "dataset_dict":
            datasets.DatasetDict({"train": table(10), "test": ds}).save_to_disk(str(tmp_path / "dict"))
            return tmp_path / "dict", "test"
        case "folder":  # a directory of data files, read as load_dataset reads a hub repository
            (tmp_path / "repo").mkdir()
            ds.to_json(str(tmp_path / "repo" / "train.jsonl"))
            return tmp_path / "repo", "train"
        case "parquet" | "csv" | "jsonl":
            path = tmp_path / f"rows.{form}"
            getattr(ds, {"jsonl": "to_json", "csv": "to_csv", "parquet": "to_parquet"}[form])(str(path))
            return path, "train"


@pytest.mark.parametrize("form", ["save_to_disk", "dataset_dict", "folder", "parquet", "csv", "jsonl"])
def test_every_local_form_gives_the_same_examples(tmp_path, form):
    path, split = saved(tmp_path, form)
    sel = DataSelection(source="hf", path=path, split=split, task="numeric", name="sums", **COLUMNS)
    examples = load_selection(sel, BIG)
    assert len(examples) == 60
    assert {e.category for e in examples} == {"sums", "doubles"}
    first = next(e for e in examples if e.instruction == "What is 3 plus 3?")
    assert (first.response, first.task, first.domain) == ("3 + 3 = 6.\n#### 6", "numeric", "sums")
    assert len(load_selection(sel.model_copy(update={"categories": ["doubles"]}), BIG)) == 30


def test_errors_name_the_data_set_and_what_is_wrong(tmp_path):
    path, _ = saved(tmp_path, "save_to_disk")
    base = dict(source="hf", path=path, **COLUMNS)
    with pytest.raises(DataError, match=r"hf data set .*disk split 'train': no column 'prompt'; it has question, "
                                        r"answer, topic"):
        load_selection(DataSelection(**base | {"instruction": "prompt"}), BIG)
    dd, _ = saved(tmp_path, "dataset_dict")
    with pytest.raises(DataError, match="split 'validation': no such split; it has train, test"):
        load_selection(DataSelection(**base | {"path": dd, "split": "validation"}), BIG)
    with pytest.raises(DataError, match=r"missing split 'train': cannot load \(FileNotFoundError"):
        load_selection(DataSelection(**base | {"path": tmp_path / "missing"}), BIG)
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(DataError, match="cannot read .txt files"):
        load_selection(DataSelection(**base | {"path": tmp_path / "rows.txt"}), BIG)


def test_a_bad_row_is_named_like_a_bad_jsonl_line(tmp_path):
    rows = table(6).to_dict()
    rows["answer"][4] = None
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "holes"))
    with pytest.raises(DataError, match=r"split 'train' row 4: 'response' must be a string, got NoneType"):
        load_selection(DataSelection(source="hf", path=tmp_path / "holes", **COLUMNS), BIG)
    rows["answer"][4] = "no number here"
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "words"))
    with pytest.raises(DataError, match="row 4: a numeric row's 'response' must contain its final number"):
        load_selection(DataSelection(source="hf", path=tmp_path / "words", task="numeric", **COLUMNS), BIG)


def test_config_keys_of_hf_only_and_relative_paths(tmp_path):
    path, _ = saved(tmp_path, "parquet")
    (tmp_path / "run.yaml").write_text("clients:\n  - name: a\n    data: {source: hf, path: rows.parquet, "
                                       "instruction: question, response: answer}\n")
    assert load_config(tmp_path / "run.yaml").clients[0].data.path == path
    hub = DataSelection(source="hf", path="openai/gsm8k", subset="main")  # a hub name stays as written
    assert (str(hub.path), hub.domain) == ("openai/gsm8k", "gsm8k-main")
    with pytest.raises(ConfigError, match=r"clients.0.data: 'split' only applies to source 'hf'"):
        config([{"name": "a", "data": {"source": "wiki", "split": "test"}}])
    with pytest.raises(ConfigError, match="source 'hf' needs 'path'"):
        config([{"name": "a", "data": {"source": "hf"}}])


def test_an_hf_client_in_a_split(tmp_path):
    path, _ = saved(tmp_path, "save_to_disk")
    clients = [{"name": "sums", "data": {"source": "hf", "path": str(path), **COLUMNS}},
               {"name": "math", "data": {"source": "gsm8k"}}]
    splits = build_splits(config(clients))
    assert_disjoint(splits)
    assert len(splits.private["sums"]) == 20 and set(splits.eval) == {"disk", "gsm8k"}


def test_evaluation_rows_from_the_data_sets_own_split(tmp_path):
    """``eval_split``: a domain's evaluation rows come from that split; a training row that repeats one of them
    leaves the training side."""
    train = table(80).to_dict()
    train["question"] = [q if i == 0 else q.replace("What", "Compute") for i, q in enumerate(train["question"])]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(train), "test": table(20)}).save_to_disk(
        str(tmp_path / "dd"))  # the first training question is also a test question
    data = {"source": "hf", "path": str(tmp_path / "dd"), "eval_split": "test", **COLUMNS}
    splits = build_splits(config([{"name": "sums", "data": data}, {"name": "math", "data": {"source": "gsm8k"}}],
                                 data={"eval_per_domain": 20}))
    assert_disjoint(splits)
    assert sorted(e.instruction for e in splits.eval["dd"]) == sorted(table(20)["question"])
    assert all(e.id.startswith("dd/test:") for e in splits.eval["dd"])
    private = splits.private["sums"]
    assert len(private) == 20 and all(e.id.startswith("dd/train:") for e in private)
    assert all(e.instruction.startswith("Compute") for e in private) and \
        all(p.instruction.startswith("Compute") for p in splits.public if p.domain == "dd")


def test_public_prompts_from_a_data_set_of_their_own(tmp_path):
    path, _ = saved(tmp_path, "parquet")
    clients = [{"name": "geo", "data": {"source": "wiki", "categories": ["Geography"]}},
               {"name": "math", "data": {"source": "gsm8k"}}]
    public = {"num_prompts": 12, "data": {"source": "hf", "path": str(path), "name": "open", **COLUMNS}}
    splits = build_splits(config(clients, public=public))
    assert_disjoint(splits)
    assert len(splits.public) == 12 and {p.domain for p in splits.public} == {"open"}
    answers = dict(zip(table()["question"], table()["answer"], strict=True))
    assert all(p.reference == answers[p.instruction] for p in splits.public)  # kept by the server, never sent
    assert build_splits(config(clients, public=public)).public == splits.public
    assert build_splits(config(clients, public=public, data={"split_seed": 1})).public != splits.public
    with pytest.raises(ConfigError, match="public: give 'path' or 'data', not both"):
        config(clients, public={**public, "path": str(path)})
