"""What semcon reports: the terminal tables of a run, and the markdown, tables and figures that ``run``, ``compare``,
``ablate`` and ``replay`` write. One module per product: ``numbers`` (what is read off the summaries), ``cells``
(numbers as table text), ``terminal``, ``figures``, ``markdown`` (``report.md``) and ``tables`` (ablation and
replay); the statistics over seeds are ``semcon.studies.stats``."""

from semcon.studies.report.cells import budget_cell, cell_title, client_spread, difference_cell, over_seeds
from semcon.studies.report.figures import bytes_figure, label_quality_figure, make_plots, quality_figure
from semcon.studies.report.markdown import write_report
from semcon.studies.report.numbers import (
    Runs,
    adapter_bytes,
    exposure_change,
    honest_delta,
    honest_mean,
    label_quality,
    mean_expert_share,
    own_other,
    paired_differences,
    per_round_mean,
    phase_seconds,
    privacy_numbers,
    round_bpb,
    seed_scores,
)
from semcon.studies.report.tables import ablation_report, replay_lines
from semcon.studies.report.terminal import outcome_lines, print_summary

__all__ = ["Runs", "ablation_report", "adapter_bytes", "budget_cell", "bytes_figure", "cell_title", "client_spread",
           "difference_cell", "exposure_change", "honest_delta", "honest_mean", "label_quality", "label_quality_figure", "make_plots", "mean_expert_share",
           "outcome_lines", "over_seeds", "own_other", "paired_differences", "per_round_mean", "phase_seconds",
           "print_summary", "privacy_numbers", "quality_figure", "replay_lines", "round_bpb", "seed_scores",
           "write_report"]
