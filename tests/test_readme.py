"""The README's Python snippet runs as written, from the repository root, and prints decoded text."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python snippet"
    return blocks[0]


@pytest.mark.skipif(not (ROOT / "models" / "trimode-tiny" / "config.json").is_file(), reason="no shipped model")
def test_readme_snippet_runs_and_prints_text():
    done = subprocess.run([sys.executable, "-c", _python_snippet()], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.search(r"\d+ forwards, [\d.]+ tokens per forward", lines[-1]), done.stdout
    text = "\n".join(lines[:-1])
    assert len(text.strip()) > 20, done.stdout  # decoded continuations, not only numbers
