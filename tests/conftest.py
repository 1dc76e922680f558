"""Shared fixtures: tiny random models built in-process from configs, the real embedder, seeds."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from semcon.rounds.rundir import read_rows

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs one worker per core) each worker and its subprocesses get one thread:
# two 2-thread workers on 2 cores spin against each other and run small matmuls many times slower.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=r"Adapter name .* should not be contained in the prefix")


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, worker_id):
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template, saved as a model directory
    (built once for all workers, as are the other tiny models)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from semcon.member.models import load_tokenizer

    def build(path):
        tok = load_tokenizer("smollm2-135m")
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        _save_tiny(LlamaForCausalLM(cfg), tok, path)

    return built_once(tmp_path_factory, worker_id, "tiny-llama", build)


@pytest.fixture(scope="session")
def embedder():
    from semcon.embed import Embedder

    return Embedder("all-minilm-l6-v2")


# What most tests never look at, and what takes most of a tiny run's seconds (a 49k-vocabulary projection per
# reference token, the base model's evaluation, answers to eval prompts, codecarbon): off unless a test asks.
LEAN_EVAL = {"max_new_tokens": 8, "generate": False, "before": False, "every_round": False, "energy": False}


def tiny_tree(model: str, **top) -> dict:
    """A small 2-client federation config (as a dict) on ``model``; ``eval`` entries update ``LEAN_EVAL``."""
    tree = {
        "name": "tiny", "seed": 0, "rounds": 1, "precision": "fp32", "threads": THREADS,
        "clients": [
            {"name": "geo", "model": model, "data": {"source": "wiki", "categories": ["Geography"]}},
            {"name": "math", "model": model, "data": {"source": "gsm8k"}},
        ],
        "data": {"examples_per_client": 8, "eval_per_domain": 4},
        "public": {"num_prompts": 6},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4, "max_length": 96, "truncate": "response"},
        # random tiny models never end an answer in 8 tokens: keep cut answers so that rounds have pseudo-labels
        "consensus": {"truncated": "keep"},
    }
    tree["eval"] = {**LEAN_EVAL, **top.pop("eval", {})}
    tree.update(top)
    return tree


def _save_tiny(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory, worker_id):
    """A 2-layer random Gemma3 with Gemma-3-270M's real tokenizer (262k vocabulary, no chat template)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from semcon.member.models import load_tokenizer

    def build(path):
        tok = load_tokenizer("gemma3-270m")
        cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               max_position_embeddings=512, sliding_window=64, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(1)
        _save_tiny(Gemma3ForCausalLM(cfg), tok, path)

    return built_once(tmp_path_factory, worker_id, "tiny-gemma3", build)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, worker_id):
    """A 2-layer random Qwen2 with MiniLM's real WordPiece tokenizer ([SEP] ends an answer)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from semcon.assets import embedder_dir

    def build(path):
        tok = AutoTokenizer.from_pretrained(embedder_dir())
        tok.eos_token = "[SEP]"
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
        torch.manual_seed(2)
        _save_tiny(Qwen2ForCausalLM(cfg), tok, path)

    return built_once(tmp_path_factory, worker_id, "tiny-qwen2", build)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist worksteal`` hands each worker one contiguous share of the tests), put one
    ``long`` test at the head of each worker's share, longest first, so that no worker runs two of them
    one after the other while the others idle."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    long = sorted((i for i in items if i.get_closest_marker("long")), key=lambda i: -i.get_closest_marker("long").args[0])
    if workers < 2 or not long:
        return
    rest = [i for i in items if not i.get_closest_marker("long")]
    ordered, left = [], len(items)
    for w in range(workers):  # the shares worksteal sends at the start: len(pending) // workers remaining
        share = left // (workers - w)
        head = long[w:w + 1] if w < workers - 1 else long[w:]
        ordered += head + rest[:share - len(head)]
        rest, left = rest[share - len(head):], left - share
    items[:] = ordered + rest


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """A directory that ``build(path)`` fills once per test session: under pytest-xdist the first worker
    to ask builds it and the others wait for it and read it (session fixtures are otherwise per worker)."""
    if worker_id == "master":
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / name  # the session's folder, shared by its workers
    with FileLock(f"{path}.lock"):
        if not (path / ".built").exists():
            path.mkdir(exist_ok=True)
            build(path)
            (path / ".built").touch()
    return path


def rows(path) -> list[dict]:
    """The JSON rows of a run directory's file (metrics, ledger, pseudo-labels), read as semcon reads them."""
    return read_rows(Path(path))


@pytest.fixture(scope="session")
def flower_tree(tiny_llama_dir):
    """The tiny federation every Flower test runs: 2 clients, 1 round, short timeouts."""
    return tiny_tree(str(tiny_llama_dir),
                     # generous for a loaded box (`make test` runs three workers on two cores): a train phase
                     # over 45 s failed a run once. A dead ClientApp is reported sooner, by Flower's own
                     # heartbeat after 60 s.
                     flower={"phase_timeout_s": 90, "connect_timeout_s": 120, "hello_timeout_s": 60})


@pytest.fixture(scope="session")
def flower_reference(flower_tree, tmp_path_factory):
    """The in-process run of ``flower_tree``: what every Flower deployment of it must reproduce."""
    from semcon.config import load_config
    from semcon.transport import simulation

    out = tmp_path_factory.mktemp("in-process")
    simulation.run(load_config(tree=flower_tree), out)
    return out


def same_results(flower_dir, reference, same_config: bool = True) -> None:
    """Same pseudo-labels and ledger (the order of concurrent replies aside; the config rows' sizes too,
    unless ``same_config``)."""
    labels = "pseudo_labels/round_01.jsonl"
    assert (flower_dir / labels).read_text() == (reference / labels).read_text()

    def ledger(path):
        where = ("round", "client", "direction", "kind")
        found = [r if same_config or r["kind"] != "config" else {k: r[k] for k in where}
                 for r in rows(path / "ledger.jsonl")]
        return sorted(found, key=lambda r: tuple(r[k] for k in where))

    assert ledger(flower_dir) == ledger(reference)


def flower_processes(home) -> list:
    """Processes still running with this deployment's FLWR_HOME."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("FLWR_HOME") == str(home):
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture(scope="session")
def tracked_run(tiny_llama_dir, tmp_path_factory, worker_id) -> Path:
    """A finished tiny run (semantic consensus, 2 clients, 1 round) that also logged to TensorBoard and W&B
    (offline): for the tracking, export and report tests."""
    from semcon.config import load_config
    from semcon.transport import simulation

    tree = tiny_tree(str(tiny_llama_dir), log=["tensorboard", "wandb"],
                     eval={"generate": True, "before": True, "every_round": True, "generate_items": 2})
    return built_once(tmp_path_factory, worker_id, "tracked-run",
                      lambda out: simulation.run(load_config(tree=tree), out / "run", overwrite=True)) / "run"


def cli(*args):
    """semcon's command line in this process (no interpreter start): exit code and output."""
    from typer.testing import CliRunner

    from semcon.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="session")
def kept_run(tiny_llama_dir, tmp_path_factory, worker_id) -> Path:
    """A finished tiny semantic-consensus run that kept its uploads with both competence signals (4 levels),
    one attacking client (math: inflate_competence with a constant text) and skip_own: for verify, replay and
    the competence tests."""
    from semcon.config import load_config
    from semcon.transport import simulation

    tree = tiny_tree(str(tiny_llama_dir), consensus={"truncated": "keep", "competence": ["knn", "gain"],
                                                     "competence_levels": 4, "rule": "gated", "fallback": "medoid",
                                                     "skip_own": True})
    tree["clients"][1]["attack"] = {"kind": "inflate_competence", "answers": "constant"}
    return built_once(tmp_path_factory, worker_id, "kept-run",
                      lambda out: simulation.run(load_config(tree=tree), out / "run", overwrite=True)) / "run"
