"""``trimode generate --image``: every mode prints the in-process API's greedy text for the same image
prompt (through the chat template, or plain with ``--raw``), ``--trace`` records it, and every bad
image or model is one line on stderr with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from serving.vlm_model_dir import PAD, build_vlm_dir, picture

from trimode.cli import main
from trimode.image_processing import build_inputs, build_prompt
from trimode.loading import SHIPPED_MODEL, load

ROOT = Path(__file__).resolve().parent.parent
MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
N = 8


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm", drafter=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / "a.png", folder / "b.jpg"]
    picture(30, 20).save(paths[0])
    picture(13, 24, seed=4).save(paths[1], quality=95)
    return [str(p) for p in paths]


def expected(vlm_dir, mode: str, prompt: str, images: list[str], chat: bool) -> str:
    """What the Python API decodes for the same prompt: the text the command must print."""
    loaded = load(vlm_dir)
    tok, config = loaded.tokenizer, loaded.model.config
    if chat:
        parts = [{"type": "image", "image": p} for p in images] + [{"type": "text", "text": prompt}]
        built = build_inputs(tok, [{"role": "user", "content": parts}], config, loaded.image_processor)
    else:
        built = build_prompt(tok, prompt, images, config, loaded.image_processor)
    ids = built["input_ids"]
    out, _ = loaded.model.decode_mode(mode, [ids], max_new_tokens=N, block_length=4, temperature=0.0,
                                      generator=torch.Generator().manual_seed(0), pixel_values=built["pixel_values"],
                                      image_sizes=built["image_sizes"])
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def run(vlm_dir, *argv) -> int:
    return main(["generate", "--model", str(vlm_dir), "--max-new-tokens", str(N), "--block-length", "4", *argv])


def test_every_mode_prints_the_api_greedy_text_through_the_chat_template(vlm_dir, images, capsys):
    assert run(vlm_dir, "--image", images[0], "--image", images[1], "What is it?") == 0
    printed = capsys.readouterr().out
    for mode in MODES:  # no <image> marker: the images come first in the user turn
        assert f"=== {mode} ===\n{expected(vlm_dir, mode, 'What is it?', images, chat=True)}\n" in printed, mode


@pytest.mark.parametrize("mode", ["ar", "quadratic-spec"])
def test_raw_prompt_places_each_image_at_its_marker(vlm_dir, images, capsys, mode):
    prompt = "left <image> right <image>."
    assert run(vlm_dir, "--raw", "--mode", mode, "--image", images[0], "--image", images[1], prompt) == 0
    assert capsys.readouterr().out.startswith(f"=== {mode} ===\n{expected(vlm_dir, mode, prompt, images, False)}\n")


def test_markers_in_a_chat_prompt_put_the_images_in_the_text(vlm_dir, images, capsys):
    """``a <image> b`` in chat mode is the turn [text 'a ', image, text ' b']: the placeholders sit there."""
    from trimode.commands.generate import image_parts, prompt_inputs

    assert image_parts("a <image> b", images[:1]) == [{"type": "text", "text": "a "},
                                                       {"type": "image", "image": images[0]},
                                                       {"type": "text", "text": " b"}]
    assert image_parts("b", images) == [{"type": "image", "image": images[0]}, {"type": "image", "image": images[1]},
                                        {"type": "text", "text": "b"}]
    ids, inputs = prompt_inputs(load(vlm_dir), "a <image> b", images[:1], chat=True)
    first = ids.index(PAD)
    assert ids.count(PAD) == 3 * 4 and first > 0 and inputs["image_sizes"].tolist() == [[24, 32]]
    assert run(vlm_dir, "--mode", "ar", "--image", images[0], "a <image> b") == 0


def test_trace_records_every_mode_of_an_image_prompt(vlm_dir, images, tmp_path, capsys):
    out = tmp_path / "trace.json"
    assert run(vlm_dir, "--image", images[0], "--trace", str(out), "Describe.") == 0
    data = json.loads(out.read_text())
    assert list(data["traces"]) == MODES and data["images"] == images[:1] and data["prompt"] == "Describe."
    printed = capsys.readouterr().out
    tok = load(vlm_dir).tokenizer
    for mode, events in data["traces"].items():
        emitted = [t for e in events for t in e["row"]["emitted"]]
        assert len(emitted) <= N and events[0]["kind"] == "prefill"
        assert f"=== {mode} ===\n{tok.decode(emitted, skip_special_tokens=True)}\n" in printed


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trimode generate: error: "), err
    return err


def test_bad_images_are_one_line_errors(vlm_dir, images, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cases = [
        ([str(tmp_path / "missing.png")], "x", "missing.png' cannot be read (No such file"),
        ([str(corrupt)], "x", "corrupt.png' is not a decodable image"),
        (["http://example.com/cat.png"], "x", "image URL scheme 'http' is not supported"),
        (["https://example.com/cat.png"], "x", "image URL scheme 'https' is not supported"),
        ([images[0]], "<image> and <image>", "PROMPT has 2 <image> markers for 1 --image files"),
    ]
    for paths, prompt, message in cases:
        argv = [a for p in paths for a in ("--image", p)]
        assert run(vlm_dir, "--mode", "ar", *argv, prompt) == 2, message
        assert message in one_line_error(capsys)


def test_images_for_a_model_without_vision_name_the_model(tmp_path, images, capsys):
    assert main(["generate", "--model", str(SHIPPED_MODEL), "--image", images[0], "x"]) == 2
    err = one_line_error(capsys)
    assert "--image: model 'trimode-tiny'" in err and "has no vision tower" in err
    no_ids = build_vlm_dir(tmp_path / "vlm-without-image-tokens", tokens=())
    assert run(no_ids, "--image", images[0], "x") == 2
    err = one_line_error(capsys)
    assert "'vlm-without-image-tokens' takes images, but its config.json names no image_token_id" in err
    assert run(no_ids, "--mode", "ar", "text only") == 0  # without images it is a text model


def test_a_corrupt_image_exits_2_without_a_traceback_from_the_command_line(vlm_dir, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    env = {k: v for k, v in os.environ.items() if k != "TRIMODE_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "trimode.cli", "generate", "--model", str(vlm_dir), "--image",
                           str(corrupt), "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"trimode generate: error: image file '{corrupt}' is not a decodable image")
