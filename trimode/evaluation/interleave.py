"""Engines back to back on the same prompts, and the metrics row of one setting (``trimode bench``).

:func:`interleaved` is how every table of :mod:`.bench` is measured: for each batch of
prompts every setting (and the transformers baseline) runs once, in an order that
rotates from round to round, so machine noise lands on all engines alike and ratios
within one table compare like with like. :func:`setting_row` turns one setting's
records into its row of metrics (:mod:`.metrics`), with its correctness against AR.
"""

from __future__ import annotations

from .accuracy import Setting, score_rows
from .metrics import RunRecord, identical_share, summarize


def interleaved(model, prompts: list[list[int]], batch_size: int, settings: list[Setting], max_new_tokens: int,
                baseline=None, repeats: int = 1) -> tuple[dict[str, list[RunRecord]], list[RunRecord], int,
                                                          dict[str, str]]:
    """Every setting (and the baseline) back to back on each batch of prompts.

    The order of the settings rotates from one round to the next, so no engine always runs
    first (or right after another). ``repeats`` rounds per batch; their records are pooled.
    ``settings[0]`` must be AR: its token counts drive the baseline, which runs last on
    each batch. A setting that fails (an engine error) is
    reported, not fatal: it stops running and its error is returned, so one broken setting
    does not cost the whole report. Returns (records per setting label, baseline records,
    batches where the baseline's tokens differ from AR's, errors per setting label).
    """
    if settings[0].mode != "ar":
        raise ValueError("the first setting must be AR (the reference)")
    records: dict[str, list[RunRecord]] = {s.label: [] for s in settings}
    base: list[RunRecord] = []
    errors: dict[str, str] = {}
    mismatches = 0
    rounds = [(i, r) for i in range(0, len(prompts), batch_size) for r in range(repeats)]
    for n, (i, _) in enumerate(rounds):
        chunk = prompts[i:i + batch_size]
        shift = n % len(settings)
        for s in settings[shift:] + settings[:shift]:
            if s.label in errors:
                continue
            try:
                records[s.label].append(s.run(model, chunk, max_new_tokens))
            except RuntimeError as e:
                if s.mode == "ar":
                    raise  # no reference, nothing to compare with
                errors[s.label] = f"{type(e).__name__}: {e} (batch of {len(chunk)}, prompts {i}..{i + len(chunk) - 1})"
        if baseline is not None:
            ar = records[settings[0].label][-1]
            rec = baseline.generate(chunk, [len(g) for g in ar.generated])
            base.append(rec)
            if batch_size == 1 and not baseline.matches(rec, ar):
                mismatches += 1
    return records, base, mismatches, errors


def setting_row(engine: str, records: list[RunRecord], reference: list[RunRecord] | None = None, tokenizer=None,
                tasks=None, error: str | None = None, repeats: int = 1) -> dict:
    """Metrics of one setting; correctness (identical to AR, accuracy) from the first round of each batch."""
    if error is not None:
        return {"engine": engine, "error": error, "tokens_per_s": None, "tpf": None}
    s = summarize(records).as_dict()
    s["engine"] = engine
    generated = first_round_outputs(records, repeats)
    if reference is not None:
        s["identical_to_ar"] = identical_share(generated, first_round_outputs(reference, repeats))
    if tasks is not None and tokenizer is not None:
        scores = score_rows(tokenizer, tasks, generated)
        s["accuracy"] = sum(scores) / len(scores)
    return s


def first_round_outputs(records: list[RunRecord], repeats: int) -> list[list[int]]:
    """Generated rows in prompt order, once (rounds of one batch are consecutive; greedy repeats are equal)."""
    return [g for r in records[::repeats] for g in r.generated]


def unique_settings(settings: list[Setting]) -> list[Setting]:
    """``settings`` without repeated labels, in order (the first of each label is kept)."""
    seen, out = set(), []
    for s in settings:
        if s.label not in seen:
            seen.add(s.label)
            out.append(s)
    return out
