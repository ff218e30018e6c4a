"""Held-out accuracy and speed of a vision-language model on the generated image tasks, per decoding mode.

:func:`evaluate_images` decodes held-out tasks (:data:`trimode.image_tasks.HELDOUT_SEED`) one at a time
(batch 1, greedy) in each setting, scores every output with :func:`trimode.image_tasks.score` and times
it. A plain function of a loaded model, tokenizer and processor, so ``trimode eval`` (or a script) can
call it; :func:`report_markdown` and :meth:`ImageEvalReport.to_dict` write what it found.

Per setting:

- ``accuracy``: facts stated exactly / facts asked, pooled over tasks (the issue's AR accuracy), beside
  ``exact_rate`` (tasks with every fact right) and the accuracy per kind;
- ``tpf``: generated tokens / forwards, pooled (prefill included, as the engine counts), and
  ``tpf_per_sequence``, the mean of each task's own TPF;
- time, from the engine's :class:`~trimode.generation.stats.GenerationStats`: ``prefill_s`` (the
  prompt's forward, which runs the vision tower) apart from ``decode_s`` (every forward after it), each
  the mean per task; ``decode_tokens_per_s`` = tokens after the first / decode time, and
  ``tokens_per_s`` = tokens / wall time of the whole call;
- ``identical_to_ar``: the share of outputs token-identical to AR greedy (1.0 for the speculative modes,
  which are lossless: a correctness check on real images).

The prompt is the one the model trained on (:func:`trimode.training.vlm_data.task_messages` through the
chat template, :func:`task_inputs`), and ``max_new_tokens`` is each task's answer length plus EOS plus a
margin of 16, as in ``trimode eval`` (a cap: the model never sees the answer); a ``max_new_tokens`` given
lowers it, and the report says when that cuts answers short.

``trimode eval`` on a vision-language model runs :func:`evaluate_image_config`: the settings of an
:class:`~trimode.evaluation.bench_config.EvalConfig` (:func:`image_settings`, its ``families`` read as
image kinds, its ``seed`` counted from :data:`~trimode.image_tasks.HELDOUT_SEED`) and a JSON-ready result
with the environment, which :func:`image_eval_markdown` renders. ``trimode bench`` on a vision-language model
runs :func:`evaluate_image_bench`: the same, from a :class:`~trimode.evaluation.bench_config.BenchConfig`
(``n_prompts`` tasks, its ``seed``, ``modes``, ``block_length`` and ``threshold``; :func:`image_bench_config`),
after one short untimed call per setting (``warmup``). :func:`decode_image` (one image prompt in one mode) is
what ``trimode demo`` shares with the evaluation.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from ..image_processing import ImageProcessor, build_inputs
from ..image_tasks import HELDOUT_SEED, KINDS, make_tasks, score
from ..training.vlm_data import task_messages
from .accuracy import ANSWER_MARGIN, answer_budget, eval_settings
from .bench_config import BenchConfig, EvalConfig
from .environment import environment


@dataclass(frozen=True)
class ImageSetting:
    """A decoding configuration: mode, block length (None: the config's) and, for diffusion, a threshold."""

    mode: str
    block_length: int | None = None
    threshold: float | None = None
    fixed_schedule: bool = False  # diffusion: one equal share per step (threshold None) instead of the config's

    @property
    def label(self) -> str:
        parts = [self.mode] + ([f"B={self.block_length}"] if self.mode != "ar" and self.block_length else [])
        if self.mode == "diffusion":
            parts.append("fixed schedule" if self.fixed_schedule else
                         f"t={self.threshold:g}" if self.threshold is not None else "t=config")
        return " ".join(parts)

    def kwargs(self) -> dict:
        out = {} if self.mode == "ar" or self.block_length is None else {"block_length": self.block_length}
        if self.mode == "diffusion" and (self.fixed_schedule or self.threshold is not None):
            out["threshold"] = None if self.fixed_schedule else self.threshold
        return out


DEFAULT_SETTINGS = (
    ImageSetting("ar"),
    ImageSetting("diffusion", 16, 0.9),
    ImageSetting("diffusion", 4, 0.99),
    ImageSetting("linear-spec", 16),
    ImageSetting("quadratic-spec", 16),
)


@dataclass
class TaskResult:
    """One decoded task."""

    index: int
    kind: str
    text: str
    correct: int
    total: int
    tokens: int
    nfe: int
    prefill_s: float
    decode_s: float
    wall_s: float
    ids: list[int] = field(repr=False, default_factory=list)


@dataclass
class SettingResult:
    """Pooled figures of one setting (see the module docstring)."""

    label: str
    setting: ImageSetting
    tasks: list[TaskResult]
    identical_to_ar: float | None = None

    @property
    def accuracy(self) -> float:
        return sum(t.correct for t in self.tasks) / max(1, sum(t.total for t in self.tasks))

    @property
    def exact_rate(self) -> float:
        return sum(t.correct == t.total for t in self.tasks) / max(1, len(self.tasks))

    def accuracy_by_kind(self) -> dict[str, float]:
        facts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for t in self.tasks:
            facts[t.kind][0] += t.correct
            facts[t.kind][1] += t.total
        return {kind: c / n for kind, (c, n) in sorted(facts.items())}

    @property
    def tpf(self) -> float:
        return sum(t.tokens for t in self.tasks) / max(1, sum(t.nfe for t in self.tasks))

    @property
    def tpf_per_sequence(self) -> float:
        return sum(t.tokens / t.nfe for t in self.tasks if t.nfe) / max(1, len(self.tasks))

    @property
    def prefill_s(self) -> float:
        return sum(t.prefill_s for t in self.tasks) / max(1, len(self.tasks))

    @property
    def decode_s(self) -> float:
        return sum(t.decode_s for t in self.tasks) / max(1, len(self.tasks))

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first (the prefill emits it) per second of decode forwards."""
        return sum(max(0, t.tokens - 1) for t in self.tasks) / max(1e-9, sum(t.decode_s for t in self.tasks))

    @property
    def tokens_per_s(self) -> float:
        return sum(t.tokens for t in self.tasks) / max(1e-9, sum(t.wall_s for t in self.tasks))

    def summary(self) -> dict:
        return {"label": self.label, "accuracy": self.accuracy, "exact_rate": self.exact_rate,
                "accuracy_by_kind": self.accuracy_by_kind(), "facts_correct": sum(t.correct for t in self.tasks),
                "facts_total": sum(t.total for t in self.tasks), "tpf": self.tpf,
                "tpf_per_sequence": self.tpf_per_sequence, "prefill_s": self.prefill_s, "decode_s": self.decode_s,
                "decode_tokens_per_s": self.decode_tokens_per_s, "tokens_per_s": self.tokens_per_s,
                "identical_to_ar": self.identical_to_ar}


@dataclass
class ImageEvalReport:
    n_tasks: int
    seed: int
    results: list[SettingResult]
    max_new_tokens: int | None = None  # the cap given, if any (each task's own budget otherwise)
    note: str = ""  # what a reader must know to read the numbers (answers cut short)

    def to_dict(self) -> dict:
        return {"n_tasks": self.n_tasks, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
                "note": self.note, "settings": [r.summary() for r in self.results],
                "outputs": {r.label: [{k: v for k, v in asdict(t).items() if k != "ids"} for t in r.tasks]
                            for r in self.results}}


def evaluate_images(model, tokenizer, processor: ImageProcessor | None = None, n_tasks: int = 32,
                    settings=DEFAULT_SETTINGS, seed: int = HELDOUT_SEED, kinds=None,
                    progress=None, max_new_tokens: int | None = None, warmup: bool = False) -> ImageEvalReport:
    """Decode ``n_tasks`` held-out image tasks (kinds cycling, :func:`~trimode.image_tasks.make_tasks`) at
    batch 1 in each of ``settings`` (:class:`ImageSetting`; AR first if present, the reference for
    ``identical_to_ar``); ``progress(label, done, n)`` is called after each task if given;
    ``max_new_tokens`` caps every task's budget. ``warmup``: first decode a few tokens of the first task in
    every setting, untimed (first-call allocations would otherwise land in the first setting's times)."""
    processor = processor if processor is not None else ImageProcessor(model.config)
    kinds = kinds or getattr(model.config, "image_task_kinds", None) or None
    tasks = make_tasks(n_tasks, seed, kinds)
    inputs = [task_inputs(tokenizer, t, model.config, processor) for t in tasks]
    budgets = [answer_budget(tokenizer, t) for t in tasks]
    note = ""
    if max_new_tokens is not None:
        needed = max(budgets) - ANSWER_MARGIN
        if max_new_tokens < needed:  # said in the report: otherwise 0% reads as a bad model
            note = (f"max_new_tokens {max_new_tokens} is below the longest answer ({needed} tokens with EOS): "
                    "answers cut short score wrong")
        budgets = [min(b, max_new_tokens) for b in budgets]
    was_training = model.training
    model.eval()
    results = []
    try:
        if warmup and tasks:
            for setting in settings:
                decode_image(model, setting.mode, inputs[0], min(4, budgets[0]), **setting.kwargs())
        for setting in sorted(settings, key=lambda s: s.mode != "ar"):
            rows = []
            for i, (task, x, budget) in enumerate(zip(tasks, inputs, budgets)):
                rows.append(_decode_task(model, tokenizer, setting, i, task, x, budget))
                if progress is not None:
                    progress(setting.label, i + 1, len(tasks))
            results.append(SettingResult(setting.label, setting, rows))
    finally:
        model.train(was_training)
    ar = next((r for r in results if r.setting.mode == "ar"), None)
    if ar is not None:
        for r in results:
            r.identical_to_ar = sum(a.ids == b.ids for a, b in zip(ar.tasks, r.tasks)) / max(1, len(r.tasks))
    return ImageEvalReport(n_tasks, seed, results, max_new_tokens, note)


def task_inputs(tokenizer, task, config, processor: ImageProcessor | None = None) -> dict:
    """The model inputs of ``task``: its image and question as the user turn the model trained on
    (:func:`~trimode.image_processing.build_inputs`: ``input_ids``, ``pixel_values``, ``image_sizes``)."""
    return build_inputs(tokenizer, task_messages(task), config, processor)


@torch.no_grad()
def decode_image(model, mode: str, inputs: dict, max_new_tokens: int, **kwargs):
    """Decode built image inputs (:func:`task_inputs`) as one prompt in ``mode``; returns (the new ids, nfe,
    :class:`~trimode.generation.stats.GenerationStats`). ``kwargs`` go to ``model.decode_mode``."""
    out, nfe, stats = model.decode_mode(mode, [inputs["input_ids"]], max_new_tokens=max_new_tokens,
                                        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                        return_stats=True, **kwargs)
    start = len(inputs["input_ids"])
    return out[0, start:start + stats.tokens_per_row[0]].tolist(), nfe, stats


def _decode_task(model, tokenizer, setting: ImageSetting, index: int, task, inputs: dict, budget: int) -> TaskResult:
    start = time.perf_counter()
    ids, nfe, stats = decode_image(model, setting.mode, inputs, budget, **setting.kwargs())
    wall = time.perf_counter() - start
    text = tokenizer.decode(ids, skip_special_tokens=True)
    facts = score(task, text)
    return TaskResult(index, task.kind, text, facts["correct"], facts["total"], len(ids), nfe, stats.prefill_time,
                      stats.decode_time, wall, ids)


# ---------------------------------------------------------------- `trimode eval` on a vision-language model
def image_kinds(families: list[str] | None) -> list[str] | None:
    """``EvalConfig.families`` read as image task kinds (None: the model's, else all); a name that is not a
    kind is a ValueError naming it and the kinds."""
    bad = [f for f in families or [] if f not in KINDS]
    if bad:
        raise ValueError(f"families: {bad[0]!r} is not an image task kind (a vision-language model is evaluated "
                         f"on the generated image tasks); allowed: {', '.join(KINDS)}")
    return families or None


def image_settings(model, config: EvalConfig) -> list[ImageSetting]:
    """The settings of ``config``, those :func:`~trimode.evaluation.accuracy.eval_settings` makes for text:
    AR first (the reference), then each mode at ``block_length`` (default: the model config's), diffusion once
    per threshold (None: the fixed schedule; default: the model config's threshold)."""
    return [ImageSetting(s.mode, s.block_length, s.threshold, fixed_schedule=s.mode == "diffusion" and s.threshold is None)
            for s in eval_settings(model, config)]


def evaluate_image_config(model, tokenizer, processor: ImageProcessor | None, config: EvalConfig,
                          progress=None, warmup: bool = False) -> dict:
    """Run :func:`evaluate_images` as ``config`` says (``seed`` counts from :data:`HELDOUT_SEED`; ``batch_size``
    does not apply: every task decodes alone); returns a JSON-ready result (:func:`image_eval_markdown`)."""
    config = config.validate()
    kinds = image_kinds(config.families)  # before any decoding: a typo is one line, not a wasted run
    started = time.perf_counter()
    report = evaluate_images(model, tokenizer, processor, config.n_tasks, image_settings(model, config),
                             HELDOUT_SEED + config.seed, kinds, progress, config.max_new_tokens, warmup)
    return {"kind": "image_eval", "environment": environment(model), "config": config.model_dump(),
            **report.to_dict(), "elapsed_s": time.perf_counter() - started}


# ---------------------------------------------------------------- `trimode bench` on a vision-language model
def image_bench_config(config: BenchConfig, max_new_tokens: int | None = None) -> EvalConfig:
    """The image evaluation ``trimode bench`` runs for ``config``: ``n_prompts`` tasks (the model's kinds) from
    its ``seed``, its ``modes`` (AR always: the reference), ``block_length``, and diffusion at its ``threshold``
    (None: the model config's). ``config.max_new_tokens`` is not read (each task gets room for its whole answer,
    so accuracy means something); ``max_new_tokens`` caps that budget when given."""
    return EvalConfig(n_tasks=config.n_prompts, seed=config.seed, modes=list(config.modes),
                      block_length=config.block_length,
                      thresholds=None if config.threshold is None else [config.threshold],
                      max_new_tokens=max_new_tokens)


def evaluate_image_bench(model, tokenizer, processor: ImageProcessor | None, config: BenchConfig, progress=None,
                         max_new_tokens: int | None = None) -> dict:
    """``trimode bench`` on a vision-language model: :func:`evaluate_image_config` of
    :func:`image_bench_config`, warmed up as ``config.warmup`` says. The result (bench.json) is that of the
    evaluation with ``kind`` ``"image_bench"``, ``config`` the bench config and ``image_config`` the evaluation
    it ran; :func:`image_eval_markdown` renders it."""
    config = config.validate()
    image_config = image_bench_config(config, max_new_tokens)
    result = evaluate_image_config(model, tokenizer, processor, image_config, progress, warmup=config.warmup)
    return result | {"kind": "image_bench", "config": config.model_dump(), "image_config": result["config"]}


def report_markdown(report: ImageEvalReport | dict) -> str:
    """One table row per setting: accuracy (facts, tasks, per kind), TPF, prefill and decode time, tokens/s.
    ``report``: an :class:`ImageEvalReport` or its :meth:`~ImageEvalReport.to_dict` (what eval.json holds)."""
    data = report.to_dict() if isinstance(report, ImageEvalReport) else report
    cap = f", max_new_tokens {data['max_new_tokens']}" if data.get("max_new_tokens") else ""
    note = f" Note: {data['note']}." if data.get("note") else ""
    lines = [f"{data['n_tasks']} held-out image tasks (seed {data['seed']}), batch 1, greedy{cap}.{note}", "",
             "| setting | facts correct | exact | per kind | TPF (pooled / per seq.) | prefill ms | decode ms | "
             "decode tok/s | tok/s | = AR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in data["settings"]:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in s["accuracy_by_kind"].items())
        same = "" if s["identical_to_ar"] is None else f"{s['identical_to_ar']:.0%}"
        lines.append(f"| {s['label']} | {s['accuracy']:.1%} ({s['facts_correct']}/{s['facts_total']}) | "
                     f"{s['exact_rate']:.0%} | {kinds} | {s['tpf']:.2f} / {s['tpf_per_sequence']:.2f} | "
                     f"{s['prefill_s'] * 1e3:.1f} | {s['decode_s'] * 1e3:.1f} | {s['decode_tokens_per_s']:.0f} | "
                     f"{s['tokens_per_s']:.0f} | {same} |")
    return "\n".join(lines)


def image_eval_markdown(result: dict) -> str:
    """The body of eval.md for a vision-language model (:func:`evaluate_image_config`'s result): the table
    and how to read it."""
    return "\n".join([report_markdown(result), "",
                      "Facts correct: facts stated exactly / facts asked, pooled over tasks; exact: tasks with "
                      "every fact right. Prefill (the prompt's forward, which runs the vision tower) and decode "
                      "(every forward after it) are each the mean per task. = AR: share of outputs "
                      "token-identical to AR greedy: the speculative modes are lossless, so anything below 100% "
                      "for them is a bug; for block diffusion it measures drift."])


__all__ = ["ImageSetting", "DEFAULT_SETTINGS", "TaskResult", "SettingResult", "ImageEvalReport", "evaluate_images",
           "task_inputs", "decode_image", "image_kinds", "image_settings", "evaluate_image_config",
           "image_bench_config", "evaluate_image_bench", "report_markdown", "image_eval_markdown"]
