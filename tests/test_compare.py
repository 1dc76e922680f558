"""`semcon compare` and `semcon comm` through the command line on tiny models, and the compare report
from hand-made summaries."""

import json
import shutil

import numpy as np
import pytest
import typer
import yaml
from conftest import tiny_tree
from matplotlib.ticker import MaxNLocator
from typer.testing import CliRunner

from semcon import cli
from semcon.config import RunConfig
from semcon.rounds.rundir import RunDir, RunDirError, claim
from semcon.studies.compare import seed_plan
from semcon.studies.report import (
    bytes_figure,
    client_spread,
    label_quality_figure,
    over_seeds,
    own_other,
    paired_differences,
    per_round_mean,
    phase_seconds,
    quality_figure,
    round_bpb,
    seed_scores,
    write_report,
)



def semcon(*args):
    """The command line in this process (`tests/test_cli.py` runs the real command in one of its own)."""
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_compare_writes_a_report_with_every_method(tiny_llama_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir), eval={"every_round": True})))
    out = tmp_path / "cmp"
    proc = semcon("compare", str(config), "--methods", "semantic_consensus,fedavg,local", "--out", str(out),
                  "--set", "public.num_prompts=4", "--set", "eval.generate=false")
    assert proc.exit_code == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for method in ("semantic_consensus", "fedavg", "local"):
        assert (out / method / "seed-0" / "ledger.jsonl").is_file() and f"| {method} |" in report
    assert json.loads((out / "compare.json").read_text())["seeds"]["local"] == [0]
    assert "## Paired difference to local" in report
    for plot in ("quality_per_round.png", "bytes_per_round.png", "seconds_per_phase.png"):
        assert (out / plot).stat().st_size > 1000 and plot in report
    assert "modelled" in report and "Energy:" in report
    assert "Produced by semcon " in report and " at commit `" in report  # every run agrees: one line
    assert "fedavg moved" in report and "analytic for this model" in report  # shapes read from config.json
    sc_line = next(line for line in report.splitlines() if line.startswith("| semantic_consensus |"))
    assert "e-" in sc_line.split("|")[-6]  # bytes relative to fedavg: a small fraction

    # `semcon report` writes the same report and plots again from the files alone
    manifest = (out / "compare.json").read_text()
    for name in ("report.md", "quality_per_round.png", "bytes_per_round.png", "seconds_per_phase.png"):
        (out / name).unlink()
    result = CliRunner().invoke(cli.app, ["report", str(out)])
    assert result.exit_code == 0, result.output[-3000:]
    assert (out / "report.md").read_text() == report and (out / "compare.json").read_text() == manifest
    assert all((out / plot).stat().st_size > 1000 for plot in ("quality_per_round.png", "bytes_per_round.png"))


def test_report_of_one_run_and_of_what_is_no_run(tracked_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tracked_run, run, ignore=shutil.ignore_patterns("wandb", "tensorboard", "checkpoints"))
    result = CliRunner().invoke(cli.app, ["report", str(run)])
    assert result.exit_code == 0, result.output[-3000:]
    report = (run / "report.md").read_text()
    assert report.startswith("# semcon run `tiny` (semantic_consensus, seed 0)")
    assert "Run directories" not in report and "× fedavg" not in report and "± clients" not in report
    outcome = report.split("## Outcome")[1].split("## ")[0]
    assert "own (" in outcome and " -> " in outcome and "LoRA-FedAvg of these adapters" in outcome
    assert "pseudo-labels of round 1" in outcome and ("[geo]" in outcome or "[math]" in outcome)
    assert "| geo | bits/byte ↓ |" in outcome and "steps" in outcome
    assert (run / "pseudo_label_quality.png").stat().st_size > 1000
    (run / "summary.json").unlink()
    result = CliRunner().invoke(cli.app, ["report", str(run)])
    assert result.exit_code == 2 and "the run has not finished (no summary.json)" in result.stderr
    result = CliRunner().invoke(cli.app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a semcon run nor a compare directory" in result.stderr


def test_compare_reports_pooling_methods_not_applicable_and_fails_when_it_is_all(tiny_llama_dir, tiny_qwen2_dir,
                                                                                 tmp_path):
    tree = tiny_tree(str(tiny_llama_dir))
    tree["clients"][1]["model"] = str(tiny_qwen2_dir)
    config = tmp_path / "hetero.yaml"
    config.write_text(yaml.safe_dump(tree))
    proc = semcon("compare", str(config), "--methods", "fedavg,centralized", "--out", str(tmp_path / "x"))
    assert proc.exit_code == 2 and "Traceback" not in proc.stderr
    assert "fedavg averages adapter weights" in proc.stderr and f"math={tiny_qwen2_dir}" in proc.stderr
    assert "centralized trains one model on the pooled data" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_comm_lands_near_the_papers_ratio():
    proc = semcon("comm", "llama-3.1-405b", "--rank", "32", "--targets", "q_proj,v_proj")
    assert proc.exit_code == 0, proc.stderr
    assert "1,011.5" in proc.stdout and "assumptions" in proc.stdout
    bad = semcon("comm", "--targets", "nope")
    assert bad.exit_code == 2 and "nope" in bad.stderr


# Report from hand-made summaries: no model runs.

def summary(clients: dict[str, dict[str, float]], *, own=None, rounds=(), **extra) -> dict:
    """A run summary whose eval_after holds ``{client: {domain: bpb}}`` (nll = 2 x bpb, rouge_l = 1 - bpb / 10)."""
    after = {c: {d: {"bpb": v, "nll": 2 * v, "rouge_l": 1 - v / 10} for d, v in per.items()}
             for c, per in clients.items()}
    return {"clients": list(clients), "eval_after": after, "own_domain": own or {c: None for c in clients},
            "per_round": list(rounds), "bytes_up": 10, "bytes_down": 20, "seconds": 5.0, **extra}


def round_row(r: int, bpb: float, quality: dict | None = None) -> dict:
    row = {"round": r, "bytes_up": 4, "bytes_down": 6, "seconds": {"train": 1.0},
           "reference": {"geo": {"geo": {"nll": 2.0, "bpb": bpb}}}}
    return row | ({"answer_quality": quality} if quality else {})


OWN = {"geo": "geo", "math": "math"}


def local_run(seed: int) -> dict:
    # client means of bpb: geo 1 + seed, math 1 + seed -> client-mean 1, 2, 3 over seeds 0, 1, 2
    return summary({"geo": {"geo": 0.5 + seed, "math": 1.5 + seed}, "math": {"geo": 1.5 + seed, "math": 0.5 + seed}},
                   own=OWN, rounds=[round_row(0, 3.0), round_row(1, 2.0)], dropped_too_long={"geo": 2, "math": 0})


def quality(consensus: float) -> dict:
    return {"prompts": 4, "consensus": {"rouge_l": consensus, "cosine": 0.8}, "random": {"rouge_l": 0.2, "cosine": 0.6},
            "clients": {"geo": {"rouge_l": 0.3, "cosine": 0.7}, "math": {"rouge_l": 0.1, "cosine": 0.5}}}


def sc_run(seed: int) -> dict:
    base = local_run(seed)
    for per in base["eval_after"].values():
        for m in per.values():
            m["bpb"] -= 0.1
    base["per_round"] = [round_row(0, 3.0), round_row(1, 1.5, quality(0.4)), round_row(2, 1.0, quality(0.5))]
    return base


@pytest.fixture
def runs():
    centralized = summary({"centralized": {"geo": 1.0, "math": 2.0}}, rounds=[round_row(0, 2.5)])
    return {"semantic_consensus": {s: sc_run(s) for s in (0, 1, 2)}, "local": {s: local_run(s) for s in (0, 1, 2)},
            "centralized": {0: centralized}}


@pytest.fixture
def cfg():
    return RunConfig.model_validate(tiny_tree("smollm2-135m", data={"split_seed": 7}, eval={"mmlu_prompt": "lm_eval"}))


def test_seed_plan_counts_per_method(cfg):
    methods = ["semantic_consensus", "local"]
    assert seed_plan(cfg, methods) == {"semantic_consensus": [0], "local": [0]}
    assert seed_plan(cfg, methods, 3)["local"] == [0, 1, 2]
    mapped = cfg.model_copy(update={"seeds": {"local": 2}, "seed": 5})
    assert seed_plan(mapped, methods) == {"semantic_consensus": [5], "local": [5, 6]}
    with pytest.raises(ValueError, match="local needs at least 1"):
        seed_plan(cfg.model_copy(update={"seeds": {"local": 0}}), methods)


def test_intervals_over_seeds_and_paired_differences(runs):
    client_mean = lambda s: np.mean(list(seed_scores(s, "bpb").values()))  # noqa: E731
    assert over_seeds(runs["local"], client_mean) == "2.000 (1.000–3.000)"  # 3 seeds: their range, no interval
    assert over_seeds(runs["centralized"], client_mean) == "1.500"
    five = {s: local_run(s) for s in range(5)}
    assert over_seeds(five, client_mean) == f"3.000 ± {2.776445 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5):.3f}"
    assert client_spread(runs["local"], "bpb") == "0.000" and client_spread(runs["centralized"], "bpb") == "–"
    diffs = paired_differences(runs, "semantic_consensus", "bpb")
    assert list(diffs) == [0, 1, 2] and all(d == pytest.approx({"geo": -0.1, "math": -0.1}) for d in diffs.values())
    # centralized's one model pairs with both local clients on the one seed it ran: 1.5 - 1.0
    centralized = paired_differences(runs, "centralized", "bpb")
    assert list(centralized) == [0] and centralized[0] == pytest.approx({"geo": 0.5, "math": 0.5})


def test_a_difference_claims_an_interval_only_from_five_seeds():
    from semcon.studies.report import difference_cell

    three = {s: {"a": -0.1 * s, "b": 0.1} for s in range(3)}
    assert difference_cell(three) == "+0.000 (seeds: +0.050, +0.000, -0.050; no interval claimed with 3 < 5 seeds)"
    five = {s: {"a": -0.02 * s, "b": -0.02 * s} for s in range(5)}  # seed means 0, -0.02, ..., -0.08
    half = 2.776445 * np.std([0, 0.02, 0.04, 0.06, 0.08], ddof=1) / np.sqrt(5)
    cell = difference_cell(five)
    assert cell.startswith(f"-0.040 t [{-0.04 - half:+.3f}, {-0.04 + half:+.3f}] boot [") and cell.endswith("(5 seeds)")


def test_own_domain_against_the_others(runs):
    assert own_other(runs["local"][1], "bpb") == pytest.approx((1.5, 2.5))
    assert own_other(runs["centralized"][0], "bpb") == (None, None)


def test_report_from_summaries(runs, cfg, tmp_path):
    report = write_report(tmp_path, runs, {m: cfg for m in runs}, {"fedavg": "needs one base model"}).read_text()
    main = report.split("## Paired")[0]
    rows = {line.split(" | ")[0]: line for line in main.splitlines() if line.startswith("| ")}
    assert "| local | 3 | 2.000 (1.000–3.000) | 0.000 |" in report
    assert "| centralized | 1 | 1.500 | – |" in report and "| fedavg | not applicable: needs one base model |" in report
    assert "split seed 7" in report and "`lm_eval`" in report and "local 3 (0, 1, 2)" in report
    assert "Provenance not recorded" in report  # hand-made summaries carry none
    assert "| semantic_consensus | -0.100 (seeds: -0.100, -0.100, -0.100; no interval claimed with 3 < 5 seeds) |" in report
    assert "| semantic_consensus | geo | -0.100 | -0.100 | -0.100 |" in report  # per client, seed by seed
    assert "Negative is better for bits/byte ↓" in report and "positive is better for ROUGE-L ↑" in report
    own = report.split("## Own domain")[1].split("##")[0]
    assert "| centralized |" not in own and "| local | 1.500 (0.500–2.500)" in own  # own 0.5 + seed over seeds 0..2
    nll = report.split("## Per-token NLL")[1].split("##")[0]
    assert "tokenizer" in nll and "| geo | smollm2-135m | 4.000 (2.000–6.000) |" in nll
    assert "| centralized | smollm2-135m | – | – | 3.000 |" in nll
    assert "| geo | 2 | 2 | – |" in report.split("too long")[1]  # dropped_too_long absent for centralized
    assert "NLL ↓" not in rows["| method"] and "bits/byte ↓" in rows["| method"]
    for plot in ("quality_per_round.png", "pseudo_label_quality.png", "bytes_per_round.png", "seconds_per_phase.png"):
        assert (tmp_path / plot).stat().st_size > 1000 and plot in report
    assert "[seed-2](local/seed-2/)" in report
    time = report.split("## Where the time went")[1].split("##")[0]
    assert "| local | 3 | 2 | 0 | 0 | 3 | 5 |" in time and "| centralized | 1 | 1 | 0 | 0 | 4 | 5 |" in time
    assert "All 7 runs: 35 s, of which training 16 s, answers 0 s, exchange 0 s, evaluation and setup 19 s." in time


def test_phase_seconds_split_a_runs_wall_time():
    rounds = [{"seconds": {"train": 10.0}}, {"seconds": {"generate": 30.0, "embed": 2.0, "aggregate": 1.0, "train": 8.0}}]
    assert phase_seconds({"per_round": rounds, "seconds": 60.0}) == {"train": 18.0, "answer": 30.0, "exchange": 3.0,
                                                                     "rest": 9.0}


def one_round_run() -> dict:
    run = sc_run(0)
    run["per_round"] = run["per_round"][1:2]
    return run


@pytest.mark.parametrize("one_round", [False, True])
def test_per_round_plots_have_integer_round_ticks(runs, one_round):
    rounds, values = per_round_mean(runs["semantic_consensus"], round_bpb)
    assert rounds == [0, 1, 2] and values == pytest.approx([3.0, 1.5, 1.0])
    if one_round:  # one point: matplotlib alone ticks it 0.95, 0.975, ... 1.05
        runs = {"semantic_consensus": {0: one_round_run()}}
    for fig in (quality_figure(runs), label_quality_figure(runs), bytes_figure(runs)):
        for ax in fig.axes:
            fig.canvas.draw()
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks)
    if one_round:
        return
    labels = {line.get_label(): list(line.get_ydata()) for line in label_quality_figure(runs).axes[0].lines}
    assert labels["consensus"] == pytest.approx([0.4, 0.5]) and labels["random client"] == pytest.approx([0.2, 0.2])
    assert "geo own" in labels and "math own" in labels


def test_a_plot_without_data_is_neither_written_nor_linked_and_the_report_says_why(cfg, tmp_path):
    bare = local_run(0)
    bare["per_round"] = [{k: v for k, v in r.items() if k != "reference"} for r in bare["per_round"]]
    (tmp_path / "quality_per_round.png").write_bytes(b"an empty frame of an earlier report")
    report = write_report(tmp_path, {"local": {0: bare}}, {"local": cfg}, {}).read_text()
    assert not (tmp_path / "quality_per_round.png").exists() and "quality_per_round.png" not in report
    assert "Not plotted: quality per round: no per-round reference scores in these runs (`eval.every_round: false`)." in report
    assert "Not plotted: pseudo label quality: no pseudo-labels scored" in report
    assert (tmp_path / "bytes_per_round.png").is_file() and "![bytes_per_round](bytes_per_round.png)" in report


def compare_command(monkeypatch, tmp_path, fake_run) -> list[str]:
    """``semcon compare`` arguments for semantic_consensus and local (2 seeds each), each federation
    replaced by ``fake_run``."""
    monkeypatch.setattr(cli, "_run_one", fake_run)
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)
    monkeypatch.setattr(cli, "_setup_logging", lambda verbose: None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree("smollm2-135m", seed=3, seeds={"semantic_consensus": 2, "local": 2})))
    return ["compare", str(config), "--methods", "semantic_consensus,local", "--out", str(tmp_path / "cmp")]


def test_seeds_run_into_their_own_directories(monkeypatch, tmp_path):
    """The command's loop over seeds and methods (seed by seed, so an interrupted compare holds paired runs),
    with each federation replaced by a hand-made summary."""
    started = []

    def fake_run(cfg, out, resume=False, overwrite=False):
        started.append((cfg.method, cfg.seed, out.relative_to(tmp_path / "cmp").as_posix()))
        RunDir.create(out, cfg)
        return local_run(cfg.seed - 3)

    args = compare_command(monkeypatch, tmp_path, fake_run)
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert started == [("semantic_consensus", 3, "semantic_consensus/seed-3"), ("local", 3, "local/seed-3"),
                       ("semantic_consensus", 4, "semantic_consensus/seed-4"), ("local", 4, "local/seed-4")]
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["seeds"] == {"semantic_consensus": [3, 4],
                                                                                    "local": [3, 4]}
    started.clear()
    result = CliRunner().invoke(cli.app, [*args, "--seeds", "1", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert started == [("semantic_consensus", 3, "semantic_consensus/seed-3"), ("local", 3, "local/seed-3")]
    assert not (tmp_path / "cmp" / "local" / "seed-4").exists()


def test_overwrite_removes_an_earlier_compare_but_nothing_else(tmp_path):
    out = tmp_path / "cmp"
    for seed in (0, 1):
        run = out / "local" / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "run_id").write_text("x")
        (run / "config.yaml").write_text("x")
    (out / "compare.json").write_text("{}")
    (out / "report.md").write_text("x")
    (out / "notes.txt").write_text("mine")
    (out / "semantic_consensus").mkdir()
    (out / "semantic_consensus" / "mine.txt").write_text("mine")
    with pytest.raises(RunDirError, match="earlier semcon compare"):
        claim(out)
    claim(out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "notes.txt", "semantic_consensus", "semantic_consensus/mine.txt"]
    foreign = tmp_path / "foreign"
    (foreign / "local" / "seed-0").mkdir(parents=True)
    with pytest.raises(RunDirError, match="holds no semcon run"):
        claim(foreign, overwrite=True)


def test_resume_keeps_finished_runs_and_continues_the_interrupted_one(monkeypatch, tmp_path):
    """A compare killed in its last run: `semcon report` reports the three finished runs and names the missing
    one; --resume reads the finished summaries and resumes only the last."""
    started = []

    def fake_run(cfg, out, resume=False, overwrite=False):
        started.append((cfg.method, cfg.seed, resume))
        if not resume:
            RunDir.create(out, cfg)
        if (cfg.method, cfg.seed, resume) == ("local", 4, False):
            raise typer.Exit(1)  # the interrupted run
        summary = local_run(cfg.seed - 3)
        RunDir(out).summary(summary)
        return summary

    args = compare_command(monkeypatch, tmp_path, fake_run)
    assert CliRunner().invoke(cli.app, args).exit_code == 1
    assert not (tmp_path / "cmp" / "report.md").exists()
    assert CliRunner().invoke(cli.app, ["report", str(tmp_path / "cmp")]).exit_code == 0  # what has finished
    assert "not finished, so left out: local seed 4." in (tmp_path / "cmp" / "report.md").read_text()
    started.clear()
    result = CliRunner().invoke(cli.app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert started == [("local", 4, True)]
    assert (tmp_path / "cmp" / "report.md").is_file()
    result = CliRunner().invoke(cli.app, [*args, "--resume", "--seeds", "1"])
    assert result.exit_code == 2 and "give the same --methods and --seeds" in result.output


def test_a_single_runs_plots_show_every_series_and_say_one_seed(tracked_run):
    from semcon.config import load_config
    from semcon.studies.report import adapter_bytes

    summary = json.loads((tracked_run / "summary.json").read_text())
    runs = {"semantic_consensus": {0: summary}}
    fig = label_quality_figure(runs)
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.lines]
        assert labels[-1] == "consensus" and {"random client", "geo own", "math own"} <= set(labels)
        assert ax.lines[-1].get_zorder() == max(line.get_zorder() for line in ax.lines)  # drawn over an equal series
        assert ax.lines[-1].get_linewidth() > max(line.get_linewidth() for line in ax.lines[:-1])
        assert "one seed" in ax.get_ylabel() and "seeds" not in ax.get_ylabel()
    fig = bytes_figure(runs, adapter_bytes(load_config(tracked_run / "config.yaml", check_files=False)))
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["semantic_consensus", "LoRA-FedAvg of the same adapters (analytic)"]
    assert lines[1].get_ydata()[-1] > 10 * lines[0].get_ydata()[-1]
    assert "one seed" in quality_figure(runs).axes[0].get_ylabel()
