"""``trimode eval``: accuracy of every decoding mode on held-out checkable tasks.

For each setting (a mode, with its block length and, for diffusion, a
threshold) the held-out tasks are decoded greedily and scored by exact match
(:func:`trimode.data.tasks.score`). Beside accuracy, every setting reports the
share of outputs token-identical to AR greedy: for block diffusion that
measures the drift its drafts introduce; for the speculative modes it must be
1.0 (they are lossless), so it doubles as a correctness check on real data.

Design choices:

- AR runs first on each batch and is the reference for "identical".
- ``max_new_tokens`` defaults to the longest expected answer (in tokens, EOS
  included) plus a margin of 16: enough room for every correct answer, no time
  spent on runaway outputs. It is a cap only; models never see the answers.
- Outputs are decoded with ``skip_special_tokens=False`` so :func:`score` cuts
  them at the first EOS string itself.
- Batched (``batch_size`` rows per call) for throughput. Rows decode
  independently, except that a diffusion row still running when another row
  sets a wider final block may denoise that last block differently (and
  batched float sums can flip a near-tie argmax): use ``batch_size=1`` for
  numbers that must not depend on batching. Speed numbers here are only
  indicative; ``trimode bench`` measures speed properly.
- ``eval.json`` keeps, per task, the expected answer and the text of every wrong
  output, so failures can be read without re-running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .bench_config import EvalConfig
from .environment import environment
from .metrics import RunRecord, identical_share, summarize, timed_decode
from .prompts import task_prompt_set, trained_families


def quick_config(**overrides) -> EvalConfig:
    """A smoke run (``trimode eval --quick``): few tasks, each still with room for its whole
    answer, since an answer cut short scores wrong in every mode and the run says nothing."""
    return EvalConfig(**{"n_tasks": 6, **overrides})


@dataclass(frozen=True)
class Setting:
    """One decoding configuration: mode + block length (+ threshold for diffusion)."""

    mode: str
    block_length: int | str | None = None  # an int, "auto", or None (the config's block)
    threshold: float | None = None
    has_threshold: bool = False  # distinguishes "threshold=None (fixed schedule)" from "config default"

    @property
    def label(self) -> str:
        parts = [self.mode]
        if self.mode != "ar" and self.block_length is not None:
            parts.append(f"B={self.block_length}")
        if self.mode == "diffusion" and self.has_threshold:
            parts.append("fixed schedule" if self.threshold is None else f"t={self.threshold:g}")
        return " ".join(parts)

    def run(self, model, prompts, max_new_tokens: int, eos_token_id=None) -> RunRecord:
        kwargs = {"threshold": self.threshold} if self.mode == "diffusion" and self.has_threshold else {}
        return timed_decode(model, self.mode, prompts, max_new_tokens=max_new_tokens,
                            block_length=None if self.mode == "ar" else self.block_length,
                            eos_token_id=eos_token_id, **kwargs)


def decode_text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


ANSWER_MARGIN = 16
"""New tokens allowed past a task's answer and its EOS (room, never a hint: models do not see answers)."""


def answer_budget(tokenizer, task) -> int:
    """New tokens that let any mode finish ``task``: its answer, EOS, and :data:`ANSWER_MARGIN`."""
    return len(tokenizer.encode(task.answer, add_special_tokens=False, split_special_tokens=True)) + 1 + ANSWER_MARGIN


def score_texts(tasks, texts: list[str]) -> list[float]:
    """Exact-match score (1.0 / 0.0) of each row's decoded text against its task."""
    from ..data.tasks import score

    return [score(t, text) for t, text in zip(tasks, texts)]


def score_rows(tokenizer, tasks, generated: list[list[int]]) -> list[float]:
    """Exact-match score (1.0 / 0.0) of each row's generated ids against its task."""
    return score_texts(tasks, [decode_text(tokenizer, g) for g in generated])


def eval_settings(model, config: EvalConfig) -> list[Setting]:
    """AR first (the reference), then each mode; diffusion once per threshold."""
    block = config.block_length or model.config.block_size
    settings = [Setting("ar")]
    for mode in config.modes:
        if mode == "ar":
            continue
        if mode == "diffusion":
            if config.thresholds:
                settings += [Setting(mode, block, t, True) for t in config.thresholds]
            else:
                settings.append(Setting(mode, block, model.config.threshold, True))
        else:
            settings.append(Setting(mode, block))
    return settings


def evaluate(model, tokenizer, config: EvalConfig | None = None) -> dict:
    """Run the evaluation; returns a JSON-ready result (see :func:`eval_markdown` for the table)."""
    config = (config or EvalConfig()).validate()
    started = time.perf_counter()
    prompt_set = task_prompt_set(tokenizer, config.n_tasks, config.seed,
                                 config.families or trained_families(model.config))
    tasks = prompt_set.tasks
    longest = max(len(p) for p in prompt_set.prompts)
    room = model.config.max_position_embeddings - longest
    note = ""
    if config.max_new_tokens is None:
        max_new = max(answer_budget(tokenizer, t) for t in tasks)
        if max_new > room:  # a short-context model: use what fits, and say so in the report
            note = (f"max_new_tokens capped at {room} by the model's context of "
                    f"{model.config.max_position_embeddings} tokens (longest answer needs {max_new - ANSWER_MARGIN})")
            max_new = room
    else:
        max_new = config.max_new_tokens
        needed = max(answer_budget(tokenizer, t) for t in tasks) - ANSWER_MARGIN
        if max_new < needed:  # said in the report: otherwise 0% reads as a bad model
            note = (f"max_new_tokens {max_new} is below the longest answer ({needed} tokens with EOS): "
                    f"answers cut short score wrong")
    if max_new < 1 or max_new > room:
        raise ValueError(f"the longest task prompt ({longest} tokens) + max_new_tokens {max_new} exceeds the "
                         f"model's context of {model.config.max_position_embeddings} tokens; lower max_new_tokens "
                         f"or n_tasks")
    settings = eval_settings(model, config)
    records: dict[Setting, list[RunRecord]] = {s: [] for s in settings}
    for i in range(0, len(tasks), config.batch_size):
        batch = prompt_set.prompts[i:i + config.batch_size]
        for s in settings:
            records[s].append(s.run(model, batch, max_new))
    reference = [g for r in records[settings[0]] for g in r.generated]
    # Per task: the expected answer, and per setting whether it scored; a wrong answer keeps its
    # text, so failures can be read (right ones equal "answer").
    rows, per_task = [], {t.id: {"family": t.family, "answer": t.answer} for t in tasks}
    for s in settings:
        generated = [g for r in records[s] for g in r.generated]
        texts = [decode_text(tokenizer, g) for g in generated]  # decoded once: scored, and kept when wrong
        scores = score_texts(tasks, texts)
        summary = summarize(records[s])
        families = {}
        for t, sc in zip(tasks, scores):
            families.setdefault(t.family, []).append(sc)
        rows.append({"setting": s.label, "mode": s.mode, "block_length": s.block_length,
                     "threshold": s.threshold if s.has_threshold else None,
                     "accuracy": sum(scores) / len(scores), "correct": int(sum(scores)), "n": len(scores),
                     "identical_to_ar": identical_share(generated, reference),
                     "family_accuracy": {f: sum(v) / len(v) for f, v in sorted(families.items())},
                     "tpf": summary.tpf, "mean_acceptance": summary.mean_acceptance,
                     "tokens_per_s": summary.tokens_per_s, "tokens": summary.tokens})
        for t, sc, g, text, ref in zip(tasks, scores, generated, texts, reference):
            per_task[t.id][s.label] = {"correct": bool(sc), "identical_to_ar": g == ref}
            if not sc:
                per_task[t.id][s.label]["output"] = text
    return {"kind": "eval", "environment": environment(model), "config": config.model_dump(),
            "prompt_set": prompt_set.description, "max_new_tokens": max_new, "note": note, "rows": rows,
            "tasks": per_task,
            "elapsed_s": time.perf_counter() - started}


def eval_markdown(result: dict) -> str:
    """The markdown body of an eval report: accuracy table and per-family breakdown."""
    rows = result["rows"]
    lines = [f"Tasks: {result['prompt_set']}; greedy; max_new_tokens {result['max_new_tokens']}; "
             f"exact-match scoring." + (f" Note: {result['note']}." if result.get("note") else ""), "",
             "| setting | accuracy | correct | identical to AR greedy | TPF | tokens/cycle |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['accuracy']:.1%} | {r['correct']}/{r['n']} | "
                     f"{r['identical_to_ar']:.1%} | {r['tpf']:.2f} | {r['mean_acceptance']:.2f} |")
    families = list(rows[0]["family_accuracy"])
    lines += ["", "Accuracy per task family:", "",
              "| setting | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for r in rows:
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r['family_accuracy'][f]:.0%}" for f in families) + " |")
    lines += ["", "Identical to AR greedy: share of outputs token-identical to AR's. The speculative modes are "
              "lossless, so anything below 100% for them is a bug; for block diffusion it measures drift. "
              "Tokens/cycle: tokens committed per cycle and row (a cycle: an AR step, a diffusion block, a "
              "speculative draft + verify). TPF: generated tokens / forwards of the batched calls (batch "
              f"{result['config']['batch_size']}; with --batch-size 1 it is the per-sequence TPF). Wall-clock speed "
              "is measured by `trimode bench`, not here."]
    return "\n".join(lines)
