"""The command line's first contact: help without torch, the shared model flags (--threads,
--dtype, --verbose), quiet loading, the demo's fixed prompts, tables whose columns mean the
same in every mode, and `eval --quick` with room for every answer."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trimode.cli import COMMANDS, build_parser, main
from trimode.loading import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parent.parent
needs_shipped = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped model")

# Runs the console script's entry point (trimode_cli.main) on each argv in a fresh process,
# and reports each exit status and which heavy packages were imported by then.
HELP_PROBE = textwrap.dedent("""
    import json, sys
    import trimode_cli
    report = []
    for argv in json.loads(sys.argv[1]):
        sys.argv = ["trimode"] + argv
        try:
            code = trimode_cli.main()
        except SystemExit as e:
            code = e.code
        heavy = sorted(m for m in ("torch", "transformers", "peft", "tokenizers", "numpy") if m in sys.modules)
        report.append({"argv": argv, "code": code, "heavy": heavy})
    print(json.dumps(report), file=sys.stderr)
""")


def _probe(argvs: list[list[str]]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRIMODE_DEFER_AUTO_REGISTRATION"}
    done = subprocess.run([sys.executable, "-c", HELP_PROBE, json.dumps(argvs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_torch():
    argvs = [["--help"]] + [[name, "--help"] for name in COMMANDS] + [["--version"]]
    for r in _probe(argvs):
        assert r["code"] == 0, r
        assert r["heavy"] == [], f"`trimode {' '.join(r['argv'])}` imported {r['heavy']}"


def test_argument_errors_import_no_torch():
    (r,) = _probe([["generate", "--mode", "turbo", "x"]])
    assert r["code"] == 2 and r["heavy"] == []


def test_mode_names_are_the_strategies_names():
    from trimode.generation.modes import STRATEGIES
    from trimode.generation.names import MODE_NAMES, SPECULATIVE_MODES

    assert tuple(STRATEGIES) == MODE_NAMES
    assert set(SPECULATIVE_MODES) < set(MODE_NAMES)


@pytest.mark.parametrize("command", ["demo", "generate", "eval", "bench", "serve", "export"])
def test_model_commands_share_the_model_flags(command):
    argv = [command, "--threads", "3", "--dtype", "bfloat16", "--verbose", "--device", "cpu"] + (
        ["x"] if command == "generate" else [])
    args = build_parser().parse_args(argv)
    assert (args.threads, args.dtype, args.verbose, args.model, args.device) == (3, "bfloat16", True, None, "cpu")
    defaults = build_parser().parse_args([command] + (["x"] if command == "generate" else []))
    assert (defaults.threads, defaults.dtype, defaults.verbose, defaults.device) == (None, "auto", False, "auto")


def test_device_flag_resolves_and_refuses_what_is_not_there(monkeypatch):
    from trimode.commands.common import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device here; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device 'gpu0' is not a device; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="torch sees 1 CUDA device"):
        resolve_device("cuda:1")


def test_train_takes_threads():
    args = build_parser().parse_args(["train", "--stage", "ar", "--out", "x", "--threads", "2"])
    assert args.threads == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_threads_is_an_argument_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--threads", bad, "x"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


@pytest.mark.parametrize("flag, bad, says", [
    ("--temperature", "-1", "-1.0 must be >= 0"), ("--temperature", "nan", "nan must be >= 0"),
    ("--temperature", "hot", "'hot' is not a number"), ("--max-new-tokens", "0", "0 must be >= 1"),
    ("--block-length", "x", "'x' is not an integer"), ("--threshold", "2", "2.0 must be in (0, 1]"),
])
def test_bad_decoding_flags_are_argument_errors(flag, bad, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", flag, bad, "x"])
    assert e.value.code == 2 and f"argument {flag}: {says}" in capsys.readouterr().err


# ---------------------------------------------------------------- the --threads default
def _args(*argv):
    return build_parser().parse_args(["generate", *argv, "x"])


def test_default_threads_small_model_one_large_model_torch_default(monkeypatch, tmp_path):
    from trimode.commands import common
    from trimode.loading import CheckpointInfo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sizes = {"small": common.SMALL_MODEL_PARAMETERS - 1, "large": common.SMALL_MODEL_PARAMETERS}
    for name in sizes:
        (tmp_path / name).mkdir()
    monkeypatch.setattr("trimode.loading.read_checkpoint_info",
                        lambda path: CheckpointInfo(files=[], numel=sizes[path.name], dtypes=set()))
    assert common.resolve_threads(_args("--model", str(tmp_path / "small"))) == 1
    assert common.resolve_threads(_args("--model", str(tmp_path / "large"))) == torch.get_num_threads()
    assert common.resolve_threads(_args("--model", str(tmp_path / "large"), "--threads", "5")) == 5
    # a directory that is not a model: no rule applies (loading will say what is wrong)
    assert common.resolve_threads(_args("--model", str(tmp_path / "missing"))) == torch.get_num_threads()


def test_omp_num_threads_replaces_the_default(monkeypatch):
    from trimode.commands import common

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert common.resolve_threads(_args()) == torch.get_num_threads()


@needs_shipped
def test_shipped_model_runs_on_one_thread_by_default(monkeypatch):
    from trimode.commands import common

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert common.resolve_threads(_args()) == 1


# ---------------------------------------------------------------- running commands
@needs_shipped
def test_generate_table_and_thread_count_restored(capsys, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    expected = torch.get_num_threads()
    try:
        assert main(["generate", "--threads", "1", "--max-new-tokens", "24", "def fibonacci(n):"]) == 0
        assert torch.get_num_threads() == expected  # the command's --threads does not leak to its caller
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.startswith("mode "))
    assert header == ["mode", "tokens", "nfe", "TPF", "tok/cycle", "fwd/cycle", "tok/s"]
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] and line.split()[0] in
            ("ar", "diffusion", "linear-spec", "quadratic-spec") and len(line.split()) == len(header)}
    assert set(rows) == {"ar", "diffusion", "linear-spec", "quadratic-spec"}
    assert rows["ar"][4:6] == ["1.00", "1.00"]  # one token per step, one forward per step
    assert 1 < float(rows["linear-spec"][5]) <= 2  # draft + verify (a last 1-token cycle only verifies)
    assert rows["quadratic-spec"][5] == "1.00"  # one fused forward
    for mode, row in rows.items():  # TPF is tok/cycle over fwd/cycle, up to the prefill's token
        tokens, nfe, tpf = int(row[1]), int(row[2]), float(row[3])
        assert tpf == pytest.approx(tokens / nfe, abs=0.01), mode
    assert "tok/cycle:" in out and "fwd/cycle:" in out  # the legend


@needs_shipped
def test_load_model_passes_dtype(monkeypatch):
    from trimode.commands.common import load_model

    args = _args("--dtype", "bfloat16", "--threads", "1")
    before = torch.get_num_threads()
    try:
        loaded = load_model(args, need="to encode the prompt")
    finally:
        torch.set_num_threads(before)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@needs_shipped
def test_generate_is_quiet_by_default():
    """The real entry point: stdout has the texts and the table, stderr nothing (no progress bar, no
    transformers warnings)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "TRIMODE_DEBUG")}
    code = "import sys, trimode_cli; sys.argv = ['trimode'] + sys.argv[1:]; sys.exit(trimode_cli.main())"
    done = subprocess.run([sys.executable, "-c", code, "generate", "--mode", "ar", "--max-new-tokens", "4", "x = "],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "=== ar ===" in done.stdout and "tok/cycle" in done.stdout
    assert done.stderr == ""


# ---------------------------------------------------------------- the demo's prompts
def test_demo_prompts_are_fixed_held_out_text():
    from trimode.commands.demo_prompts import CODE_PROMPT, TASKS, demo_task
    from trimode.data.tasks import FAMILIES, task_split

    assert CODE_PROMPT == CODE_PROMPT.rstrip() and CODE_PROMPT.startswith("import codecs")
    for family, (prompt, answer) in TASKS.items():
        assert family in FAMILIES and task_split(family, prompt) == "heldout", family
        assert answer
    assert demo_task(["json", "repeat"]).prompt == TASKS["json"][0]
    assert demo_task(["repeat", "json"]).family == "repeat"
    assert demo_task(None).family == "json"
    assert demo_task(["add"]).family == "add"  # no shipped task: a held-out one from the generator


@needs_shipped
def test_demo_says_what_the_model_is_for(capsys, monkeypatch):
    assert main(["demo", "--max-new-tokens", "8"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("trimode-tiny: 4.2M parameters") and "not a chat model" in first
    assert "stdlib code" in first and "json" in first


# ---------------------------------------------------------------- eval --quick
@needs_shipped
def test_eval_quick_gives_every_answer_room(tmp_path, monkeypatch):
    """With room for their answers, the shipped model solves most quick tasks in AR (a cap
    below the answers' length scores every mode 0%)."""
    assert main(["eval", "--quick", "--modes", "ar", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    (ar,) = result["rows"]
    assert ar["accuracy"] >= 0.5 and not result["note"]


@needs_shipped
def test_eval_says_when_max_new_tokens_cuts_answers(tmp_path, monkeypatch):
    assert main(["eval", "--quick", "--modes", "ar", "--max-new-tokens", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert "below the longest answer" in result["note"]
    assert "below the longest answer" in (tmp_path / "eval.md").read_text()


def test_console_script_and_package_agree_on_the_deferral_variable():
    import trimode
    import trimode_cli

    assert trimode_cli._FLAG == trimode.DEFER_REGISTRATION_ENV
