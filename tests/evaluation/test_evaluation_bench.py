"""The harness end to end on a tiny random model: `trimode bench --quick` and `trimode eval --quick` write
their files, the numbers are consistent, and bad inputs give one clear line."""

import json
import re
import shlex

import pytest
from evaluation_stubs import host
from helpers import StubModel, tiny_model

from trimode.cli import main
from trimode.data.tasks import normalize_output
from trimode.evaluation.bench import quick_config, run_bench
from trimode.evaluation.prompts import PromptSet


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model with a tiny BPE tokenizer trained on task texts and a few code files."""
    from trimode.data.corpus import CodeCorpus
    from trimode.data.tasks import format_prompt, generate_tasks
    from trimode.tokenization import train_tokenizer

    texts = [format_prompt(t) + t.answer for t in generate_tasks("train", 60, 0)]
    texts += list(CodeCorpus("train", max_files=3).texts())
    tok = train_tokenizer(texts, vocab_size=320)
    path = tmp_path_factory.mktemp("tiny-harness")
    tiny_model(seed=0, vocab_size=len(tok), max_position_embeddings=512, block_size=4).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _reruns_as(md: str, argv: list[str]) -> bool:
    """The command in a report's first code block parses to the same options as ``argv``."""
    from trimode.cli import build_parser

    command = md.split("```\n", 1)[1].split("\n", 1)[0]
    assert command.startswith("trimode ")
    parser = build_parser()

    def options(args):
        return {k: v for k, v in vars(parser.parse_args(args)).items() if k not in ("func", "_parser")}

    return options(shlex.split(command)[1:]) == options(argv)


def test_bench_quick_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["bench", "--model", str(model_dir), "--quick", "--out", str(out)]) == 0
    for name in ("bench.md", "bench.json", "RESULTS.md", "acceptance_histograms.png", "threshold_sweep.png",
                 "block_sweep.png", "autotune.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "bench.md").read_text()
    assert md.startswith("# trimode bench: ")
    argv = ["bench", "--model", str(model_dir), "--quick", "--out", str(out)]
    assert _reruns_as(md, argv)  # the report's command repeats this run
    for key in ("torch", "threads", "cpu", "dtype", "commit"):
        assert f"| {key} |" in md
    result = json.loads((out / "bench.json").read_text())
    assert {(t["prompt_set"], t["batch_size"]) for t in result["main"]} == {
        (s, b) for s in ("tasks", "code") for b in (1, 2)}
    for table in result["main"]:
        rows = {r["mode"]: r for r in table["rows"]}
        assert set(rows) == {"ar", "diffusion", "linear-spec", "quadratic-spec", "transformers"}
        for mode in ("linear-spec", "quadratic-spec"):  # lossless at T = 0
            assert rows[mode]["identical_to_ar"] == 1.0
            assert rows[mode]["tokens"] == rows["ar"]["tokens"]
        assert rows["transformers"]["tokens"] == rows["ar"]["tokens"]  # same token count, like for like
        assert rows["ar"]["vs_ar"] == 1.0 and rows["transformers"]["vs_transformers"] == 1.0
        for r in table["rows"]:
            if r["mode"] != "transformers":
                assert r["tpf"] == pytest.approx(r["tokens"] / r["nfe"])
                assert sum(int(k) * v for k, v in r["acceptance_histogram"].items()) <= r["tokens"]
        if table["batch_size"] == 1:
            assert table["baseline_mismatches"] == 0  # transformers emits trimode AR's tokens
    assert result["sol"] and all(s["reference_reproduced"] == 1.0 for s in result["sol"])
    assert {r["mode"] for r in result["autotune"]["rows"]} == {"diffusion", "linear-spec", "quadratic-spec"}
    assert all(r["chosen_block_length"] in (1, 2, 4) for r in result["autotune"]["rows"])
    assert [r["threshold"] for r in result["threshold_sweep"]["rows"]] == [None, 0.5, 0.9]
    assert "goals" not in result and "Goals" not in md  # a bench reports measurements, not targets
    assert "Results in one minute" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["bench", "--quick", "--modes", "ar,linear-spec", "--thresholds", "none,0.5", "--batch-sizes", "1,2",
     "--prompt-sets", "", "--no-sol", "--dtype", "float32", "--model", "dir with space", "--threshold", "0.7"],
    ["eval", "--humaneval", "--humaneval-prompt", "raw", "--families", "add,sort", "--no-drafter", "--seed", "3"],
    ["eval", "--humaneval", "5", "--verbose", "--threads", "2"],
])
def test_a_rebuilt_command_repeats_the_run(argv):
    """Without the trimode CLI's sys.argv, the command is rebuilt from the options that differ from their defaults."""
    from trimode.cli import build_parser
    from trimode.evaluation.environment import command_line

    args = build_parser().parse_args(argv)
    command = command_line(argv[0], args, args._parser)
    assert _reruns_as("```\n" + command + "\n", argv)
    assert command_line(argv[0]) == f"trimode {argv[0]}"


@pytest.mark.parametrize("name", ["bench", "eval"])
def test_every_option_is_named_after_its_attribute(name):
    """What rebuilding a command relies on: every option is --<attribute with dashes>, every switch store_true."""
    from trimode.cli import build_parser

    args = build_parser().parse_args([name])
    defaults = vars(args._parser.parse_args([]))
    flags = set(re.findall(r"\[(--[\w-]+)", args._parser.format_usage())) - {"--help"}
    assert {f[2:].replace("-", "_") for f in flags} == set(defaults) - {"func", "_parser"}
    assert all(v is not True for v in defaults.values())


def test_eval_quick_end_to_end(model_dir, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model_dir), "--quick", "--out", str(out), "--thresholds", "0.5,none",
            "--no-drafter"]
    assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    labels = [r["setting"] for r in result["rows"]]
    assert labels == ["ar", "diffusion B=4 t=0.5", "diffusion B=4 fixed schedule", "linear-spec B=4",
                      "quadratic-spec B=4"]
    rows = {r["setting"]: r for r in result["rows"]}
    assert rows["linear-spec B=4"]["identical_to_ar"] == rows["quadratic-spec B=4"]["identical_to_ar"] == 1.0
    assert all(r["n"] == 6 and 0.0 <= r["accuracy"] <= 1.0 for r in result["rows"])
    tasks = result["tasks"].values()
    assert len(tasks) == 6 and all(t["answer"] for t in tasks)
    # a wrong answer keeps its text; a right one does not repeat the expected answer
    assert all(("output" in t[s]) != t[s]["correct"] for t in tasks for s in labels)
    assert all(normalize_output(t[s]["output"]) != t["answer"] for t in tasks for s in labels if "output" in t[s])
    assert sum(t["ar"]["correct"] for t in tasks) == rows["ar"]["correct"]
    md = (out / "eval.md").read_text()
    assert md.startswith("# trimode eval: ") and "| commit |" in md and _reruns_as(md, argv)


@pytest.mark.parametrize("repeats", [1, 2])
def test_bench_library_on_a_stub_with_own_prompts(repeats):
    """run_bench accepts any prompts; on an accept-all stub every number is exact (repeats pool rounds)."""
    stub = host(StubModel("right"))
    config = quick_config(baseline=False, autotune=False, thresholds=[0.9], block_lengths=[4], batch_sizes=[1],
                          max_new_tokens=9, block_length=4, warmup=False, repeats=repeats)
    sets = [PromptSet.from_ids("mine", [[5, 6, 7], [5, 6, 7, 8, 9]])]
    result = run_bench(stub, None, config, prompt_sets=sets, log=lambda m: None)
    rows = {r["mode"]: r for r in result["main"][0]["rows"]}
    # 9 tokens: prefill emits 1, then 2 cycles of 4. Per prompt: linear nfe 1 + 2*2, quadratic 1 + 2.
    assert rows["linear-spec"]["nfe"] == 10 * repeats and rows["quadratic-spec"]["nfe"] == 6 * repeats
    assert rows["quadratic-spec"]["acceptance_histogram"] == {"4": 4 * repeats}
    assert rows["ar"]["tokens"] == rows["linear-spec"]["tokens"] == 18 * repeats
    assert rows["linear-spec"]["identical_to_ar"] == rows["diffusion"]["identical_to_ar"] == 1.0
    sol = result["sol"][0]
    assert sol["nfe"] == 2 * (1 + 2 * 2) and sol["samplers"]["linear-spec"]["share_of_sol"] == pytest.approx(1.0)
    assert sol["reference_reproduced"] == 1.0
    assert [r["identical_to_ar"] for r in result["threshold_sweep"]["rows"]] == [1.0, 1.0]


def test_bad_inputs_are_one_clear_line(model_dir, tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "missing"), "--quick"]) == 2
    assert "no model at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", str(model_dir), "--modes", "ar,warp"])
    assert "'warp' is not one of" in capsys.readouterr().err
    assert main(["bench", "--model", str(model_dir), "--quick", "--max-new-tokens", "600", "--out",
                 str(tmp_path / "x")]) == 2
    assert "exceed the model's context of 512" in capsys.readouterr().err
    bare = tmp_path / "no-tokenizer"
    tiny_model().save_pretrained(bare)
    assert main(["eval", "--model", str(bare), "--quick"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_a_failing_setting_is_reported_not_fatal(tmp_path):
    """An engine error in one mode becomes an error row; every other number is still reported."""
    from trimode.evaluation.bench import write_bench_report

    model = host(StubModel("right"), fail_mode="quadratic-spec")
    config = quick_config(baseline=False, autotune=False, thresholds=[], block_lengths=[2, 4], batch_sizes=[1],
                          max_new_tokens=9, block_length=4, warmup=False)
    result = run_bench(model, None, config, prompt_sets=[PromptSet.from_ids("mine", [[5, 6, 7]])], log=lambda m: None)
    rows = {r["mode"]: r for r in result["main"][0]["rows"]}
    assert "KVCache overflow: simulated" in rows["quadratic-spec"]["error"]
    assert rows["linear-spec"]["tokens"] == 9 and "error" not in rows["linear-spec"]
    assert all("error" in r for r in result["block_sweep"]["rows"] if r["mode"] == "quadratic-spec")
    paths = write_bench_report(result, tmp_path, "trimode bench --test", plots=True)
    assert "**error**: RuntimeError: KVCache overflow: simulated" in (tmp_path / "bench.md").read_text()
    assert len(paths) >= 3
