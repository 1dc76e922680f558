"""Compare semcon's ROUGE-L and GSM8K exact match with lm-evaluation-harness's, case by case (a check, not a
dependency: lm-eval lives in a throwaway venv and only its files are used).

    python3 -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install --no-deps lm-eval==0.4.13 rouge-score nltk absl-py six
    .venv/bin/python scripts/check_lm_eval.py /tmp/lmeval/lib/python3.11/site-packages

lm-eval's side: the zero-shot MMLU prompt (the subject's ``description`` and the ``doc_to_text`` template of
its installed yaml files, rendered with jinja2; continuations ``target_delimiter`` + choice); ROUGE-L as its
``cnn_dailymail`` task computes it (``rouge-score``, stemmed, after its ``normalize_text``); GSM8K's "flexible-extract" filter (regex and group from the installed ``gsm8k.yaml``, run
by lm-eval's own ``RegexFilter``, then ``take_first``) and its ``exact_match`` settings from the same yaml. The
exact-match normalisation is the loop of ``lm_eval.api.metrics.exact_match_hf_evaluate``, repeated here
because that module imports sacrebleu.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import re
import sys
from pathlib import Path

import jinja2
import yaml

from semcon.config import DataSelection
from semcon.data import load_selection
from semcon.member.evaluate import final_number, gsm8k_exact_match, lm_eval_prompt, rouge_l

MMLU_SUBJECTS = ("astronomy", "high school biology", "us foreign policy", "abstract algebra")

ROUGE_CASES = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat and the mat", "the cat sat on the mat"),
    ("Running runners ran.", "The runner runs"),
    ("Paris is the capital\n\n of   France.", "The capital of France is Paris."),
    ("Γειά σου κόσμε 42", "κόσμε 42 hello"),
    ("", "nothing predicted"),
]

# (answer text, gold number as GSM8K writes it after "#### ")
GSM8K_CASES = [
    ("She pays 18.00 in total.", "18"),
    ("It costs $1,000.", "1000"),
    ("He loses -$5 on the deal.", "-5"),
    ("16 - 3 = 13", "13"),
    ("Worked out: 3 + 4 = 7.\n#### 42", "42"),
    ("The answer is 7.0", "7"),
    ("The answer is 42.", "42"),
    ("So she makes 18 dollars.", "18"),
    ("It is -12 degrees.", "-12"),
    ("The total is 1,234.", "1234"),
    ("She has 16-3 = 13 left.", "13"),
    ("#### 42\nThen 7 more words.", "42"),
    ("I do not know.", "5"),
]


def _module(path: Path, name: str):
    """Import one file as a module, its import-time prints swallowed."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
    return module


def _gsm8k(site: Path):
    """lm-eval's GSM8K flexible-extract filter and exact-match settings, from its installed yaml."""
    from lm_eval.filters.extraction import RegexFilter

    task = yaml.safe_load((site / "lm_eval/tasks/gsm8k/gsm8k.yaml").read_text())
    steps = next(f["filter"] for f in task["filter_list"] if f["name"] == "flexible-extract")
    regex = next(s for s in steps if s["function"] == "regex")
    metric = next(m for m in task["metric_list"] if m["metric"] == "exact_match")
    extract = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex.get("group_select", 0))

    def normalise(text: str) -> str:
        for pattern in metric.get("regexes_to_ignore", []):
            text = re.sub(pattern, "", text)
        return text.lower() if metric.get("ignore_case") else text

    return regex["regex_pattern"], lambda text: extract.apply([[text]], [{}])[0][0], normalise


def _lm_eval_mmlu_prompt(site: Path, subject: str, question: str, choices: tuple[str, ...]) -> str:
    """lm-eval's zero-shot context of one MMLU question: the subject's description, then ``doc_to_text``."""
    folder = site / "lm_eval/tasks/mmlu/default"
    template = yaml.safe_load((folder / "_default_template_yaml").read_text())
    description = yaml.safe_load((folder / f"mmlu_{subject.replace(' ', '_')}.yaml").read_text())["description"]
    text = jinja2.Template(template["doc_to_text"], keep_trailing_newline=True).render(
        question=question, choices=list(choices))
    return description + text


def main(site: Path) -> int:
    sys.path.append(str(site))  # last, so semcon's own packages win and only lm_eval comes from there
    version = importlib.metadata.version("lm_eval")
    cnn = _module(site / "lm_eval/tasks/cnn_dailymail/utils.py", "lm_eval_cnn_utils")
    pattern, extract, normalise = _gsm8k(site)
    print(f"lm-eval {version} from {site}")

    template = yaml.safe_load((site / "lm_eval/tasks/mmlu/default/_default_template_yaml").read_text())
    print(f"\nMMLU zero-shot prompt (semcon lm_eval_prompt vs lm-eval's yaml; choices {template['doc_to_choice']},"
          f" target_delimiter ' ')")
    same_prompt = 0
    for subject in MMLU_SUBJECTS:
        e = load_selection(DataSelection(source="mmlu", categories=[subject]), 10**9)[0]
        same = lm_eval_prompt(e) == _lm_eval_mmlu_prompt(site, subject, e.question, e.choices)
        same_prompt += same
        print(f"{subject:<24} {e.id:<40} {'identical' if same else 'DIFFERENT'}")

    print("\nROUGE-L F (semcon rouge_l vs lm-eval cnn_dailymail calculate_rouge_scores)")
    print(f"{'prediction':<40} {'reference':<34} {'semcon':>7} {'lm-eval':>7}  same")
    same_rouge = 0
    for pred, ref in ROUGE_CASES:
        ours, theirs = rouge_l(pred, ref), cnn.calculate_rouge_scores([pred], [ref])["rougeL"]
        same_rouge += abs(ours - theirs) < 1e-9
        print(f"{pred!r:<40} {ref!r:<34} {ours:>7.4f} {theirs:>7.4f}  {'yes' if abs(ours - theirs) < 1e-9 else 'NO'}")

    print(f"\nGSM8K (semcon final_number / gsm8k_exact_match vs lm-eval flexible-extract {pattern!r} + exact_match)")
    print(f"{'answer':<36} {'gold':>5} {'semcon':>8} {'lm-eval':>8} {'sem ok':>6} {'lm ok':>5}  agree")
    same_match = 0
    for text, gold in GSM8K_CASES:
        reference = f"Worked solution.\n#### {gold}"
        ours, ours_ok = final_number(text), gsm8k_exact_match(text, reference)
        theirs = normalise(extract(text))
        theirs_ok = theirs == normalise(reference)
        same_match += ours_ok == theirs_ok
        print(f"{text!r:<36} {gold:>5} {ours!s:>8} {theirs:>8} {ours_ok!s:>6} {theirs_ok!s:>5}  "
              f"{'yes' if ours_ok == theirs_ok else 'NO'}")
    print(f"\nMMLU prompts identical on {same_prompt}/{len(MMLU_SUBJECTS)}; ROUGE-L equal on "
          f"{same_rouge}/{len(ROUGE_CASES)}; exact-match verdicts agree on {same_match}/{len(GSM8K_CASES)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check_lm_eval.py SITE_PACKAGES  (the site-packages holding lm_eval)")
    sys.exit(main(Path(sys.argv[1])))
