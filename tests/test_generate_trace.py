"""trimode generate --trace: the events as JSON (their emitted tokens are the printed text's tokens) or
as one self-contained page; a file of another kind is refused before the model loads."""

from __future__ import annotations

import json

from trimode.cli import main
from trimode.loading import SHIPPED_MODEL, load


def test_the_json_trace_holds_every_forward_of_every_mode(tmp_path, capsys):
    out = tmp_path / "trace.json"
    assert main(["generate", "--model", str(SHIPPED_MODEL), "--max-new-tokens", "12", "--block-length", "4",
                 "--raw", "--trace", str(out), "def add(a, b):"]) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "trimode-tiny" and data["prompt"] == "def add(a, b):"
    assert list(data["traces"]) == ["ar", "diffusion", "linear-spec", "quadratic-spec"]
    tok = load(SHIPPED_MODEL).tokenizer
    printed = capsys.readouterr().out
    for mode, events in data["traces"].items():
        assert [e["nfe"] for e in events] == list(range(1, len(events) + 1))
        emitted = [t for e in events for t in e["row"]["emitted"]]
        assert len(emitted) == 12
        assert f"=== {mode} ===\n{tok.decode(emitted, skip_special_tokens=True)}\n" in printed  # the same tokens
        assert all(set(map(str, e["row"]["emitted"])) <= set(e["text"]) for e in events)


def test_the_html_trace_is_one_file_with_the_events_inside(tmp_path):
    out = tmp_path / "trace.html"
    assert main(["generate", "--model", str(SHIPPED_MODEL), "--mode", "linear-spec", "--max-new-tokens", "6",
                 "--trace", str(out), "x = 1"]) == 0
    page = out.read_text()
    assert "window.TRIMODE_RECORDED = " in page and "/static/" not in page  # css and script inlined
    recorded = json.loads(page.split("window.TRIMODE_RECORDED = ", 1)[1].split(";</script>", 1)[0])
    assert list(recorded["traces"]) == ["linear-spec"]


def test_a_trace_file_of_another_kind_is_refused(tmp_path, capsys):
    assert main(["generate", "--model", str(SHIPPED_MODEL), "--trace", str(tmp_path / "t.txt"), "x"]) == 2
    assert "must end in .html (a page) or .json" in capsys.readouterr().err
    assert not (tmp_path / "t.txt").exists()
