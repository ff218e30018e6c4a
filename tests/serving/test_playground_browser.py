"""The playground in a real browser: headless Chromium (Debian's, which .ci/run installs) driven by
Playwright loads / from a live server on 127.0.0.1, runs every mode and the four-way race, and the DOM
shows what the trace says. A screenshot of each mode is saved under pytest's temporary directory
(``playground-screenshots``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium here: .ci/run installs Debian's chromium package", allow_module_level=True)

MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec"]
# Chromium on a closed network: no background connections, no sandbox (tests may run as root).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SETTINGS = {"prompt": "def add(a, b):", "max_tokens": 16, "block_length": 4}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("playground-screenshots")


class Page:
    """The playground open in a fresh page, with the console errors it logs."""

    def __init__(self, browser, url: str, state: str = "ready", offline: bool = False):
        self.page = browser.new_page(viewport={"width": 1366, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        if offline:  # a saved page: every request but the file itself is refused
            self.page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
        self.page.goto(url)
        self.page.wait_for_selector(f"body[data-state={state}]")

    def run(self, mode: str, prompt: str = SETTINGS["prompt"], block_length: int = SETTINGS["block_length"],
            click: bool = False):
        p = self.page
        p.set_checked("#chat", False)  # the raw prompt, as expected() sends it
        p.fill("#prompt", prompt)
        p.select_option("#mode", mode)
        p.fill("#block-length", str(block_length))
        p.fill("#max-tokens", str(SETTINGS["max_tokens"]))
        if click:
            p.click("#run")  # a form submit: the browser's own checks of the fields must not block it
        else:
            p.press("#prompt", "Control+Enter")  # the keyboard path
        p.wait_for_selector("body[data-state=done]")

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()


def expected(live, mode: str) -> dict:
    """What the trace of the same request says (greedy: the same forwards)."""
    body = dict(SETTINGS, mode=mode, trace=True)
    r = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()
    verifies = [t["row"] for t in r["trace"] if t["kind"] in ("verify", "draft+verify")]
    return {"nfe": r["usage"]["nfe"], "tokens": r["usage"]["completion_tokens"],
            "accepted": sum(min(v["accepted"], len(v["emitted"])) for v in verifies),
            "bonus": sum(len(v["emitted"]) > v["accepted"] for v in verifies),
            "rejected": sum(len(v["rejected"]) for v in verifies if len(v["emitted"]) > v["accepted"])}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["random", "accepting"])
def test_each_mode_renders_what_its_trace_says(browser, server, accepting_server, shots, mode, model):
    live = server if model == "random" else accepting_server
    want = expected(live, mode)
    page = Page(browser, live.url + "/")
    page.run(mode)
    panel = f".panel[data-mode='{mode}']"
    assert page.count(f"{panel} .output .tok") >= want["tokens"] > 0
    assert page.count(f"{panel} .output .tok.accepted") == want["accepted"]
    assert page.count(f"{panel} .output .tok.bonus") == want["bonus"]
    assert page.count(f"{panel} .output .tok.rejected") == want["rejected"]
    if mode == "diffusion":
        assert page.count(f"{panel} .output .tok.diffusion") >= 1
    assert page.text(f"{panel} .nfe") == str(want["nfe"])
    assert page.text(f"{panel} .tokens") == str(want["tokens"])
    assert page.text(f"{panel} .tpf") == f"{want['tokens'] / want['nfe']:.2f}"
    assert page.count(f"{panel} .timeline span") == want["nfe"]
    page.page.screenshot(path=str(shots / f"{model}-{mode}.png"), full_page=True)
    assert page.errors == []


def test_the_race_runs_all_four_side_by_side(browser, accepting_server, shots):
    page = Page(browser, accepting_server.url + "/")
    page.page.fill("#threshold", "0.9")  # not a multiple of any step the field might declare
    page.run("race", click=True)
    for mode in MODES:
        panel = f".panel[data-mode='{mode}']"
        assert page.count(f"{panel} .output .tok") > 0
        assert int(page.text(f"{panel} .nfe")) > 0
    # an accepting model: each speculative cycle keeps its drafts, so fewer forwards than AR
    assert int(page.text(".panel[data-mode='linear-spec'] .nfe")) < int(page.text(".panel[data-mode='ar'] .nfe"))
    assert page.count(".histogram:not([hidden]) .bar") >= 2
    page.page.screenshot(path=str(shots / "race.png"), full_page=True)
    assert page.errors == []


@pytest.mark.parametrize("prompt, block_length, message", [
    ("", 4, "the prompt is empty"),
    ("def f():", 100000, "block_length=100000 is too large"),
])
def test_bad_inputs_show_the_servers_message(browser, server, prompt, block_length, message):
    page = Page(browser, server.url + "/")
    page.run("ar" if block_length == 4 else "linear-spec", prompt=prompt, block_length=block_length)
    assert page.page.locator("#error").is_visible()
    assert message in page.text("#error")
    assert all("status of 400" in e for e in page.errors)  # the browser logs the failed request itself, no more


def test_a_recorded_trace_page_draws_offline(browser, tmp_path, shots):
    from trimode.cli import main
    from trimode.loading import SHIPPED_MODEL

    out = tmp_path / "trace.html"
    assert main(["generate", "--model", str(SHIPPED_MODEL), "--max-new-tokens", "12", "--block-length", "4",
                 "--trace", str(out), "def add(a, b):"]) == 0
    page = Page(browser, out.as_uri(), state="done", offline=True)
    assert page.page.locator("#controls").is_hidden() and "def add(a, b):" in page.text("#prompt-shown")
    for mode in MODES:
        assert page.count(f".panel[data-mode='{mode}'] .output .tok") >= 12
        assert page.text(f".panel[data-mode='{mode}'] .tokens") == "12"
    page.page.screenshot(path=str(shots / "recorded.png"), full_page=True)
    assert page.errors == []
