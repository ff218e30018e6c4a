"""``trimode demo``: the default model on two fixed prompts, in all four modes.

No arguments needed: it loads the default model (trimode-smol when its base is
installed, else trimode-tiny; or ``--model DIR``), says what the model is, runs the fixed
prompts of :mod:`.demo_prompts` (a chat request and a request for code; for a model
trained by ``trimode train``, a code prompt and a held-out checkable task) in every mode,
and prints each mode's text and a table of nfe, TPF, tokens and forwards per cycle,
tokens/s and, for a task, whether the answer is right.

A vision-language model's prompt is one held-out generated image task instead (a bar chart
when the model knows that kind), its PNG saved in the temporary directory: the table's
"correct" column counts the facts it states right (k/n). Without ``--model``, when the
shipped vision-language model (``models/trimode-tiny-vlm``) is there, the text model's
prompts are followed by that image prompt, answered by the shipped VLM.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .common import (
    MODE_CHOICES,
    STAT_COLUMNS,
    STATS_LEGEND,
    add_model_arguments,
    load_model,
    positive_int,
    stats_row,
    stats_table,
)

CODE_TOKENS = 64  # new tokens of the code prompt
SHIPPED_VLM_NAME = "trimode-tiny-vlm"  # under the shipped models' folder, once it ships
IMAGE_KIND = "bars"  # the demo's image: a bar chart reads at a glance, and its facts are easy to check by eye
COLUMNS = [("prompt", "prompt")] + STAT_COLUMNS + [("correct", "correct")]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the default model in all four modes (no arguments needed)",
                       description="Run the default model (trimode-smol when its base is installed, else "
                                   "trimode-tiny; or --model DIR) on two fixed prompts in all four decoding modes; "
                                   "print each mode's text and statistics. A vision-language model gets one "
                                   "held-out image task instead (its PNG saved in the temporary directory); "
                                   "without --model, the shipped one (when present) answers it after the text "
                                   "prompts.")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"new tokens per prompt (default: {CODE_TOKENS} for a chat or code prompt; for a task, its "
                        "answer (EOS included) + 16, so every mode can finish it)")
    p.add_argument("--block-length", type=positive_int, default=None, help="block length (default: the model's config)")
    p.set_defaults(func=run)


def demo_prompts(tokenizer, families: list[str] | None, chat: bool) -> list[tuple[str, list[int], object, str]]:
    """(name, prompt ids, task or None, text to show). A model trained by ``trimode train`` (``families``: its
    trained task families): the code prompt, then a held-out task of the first of ``families``
    that the demo has. A chat model (``chat``, see :func:`~trimode.evaluation.prompts.is_chat_model`): a
    chat request, then a request for code."""
    from ..data.tasks import format_prompt
    from ..tokenization import chat_prompt_ids
    from .demo_prompts import CHAT_NAME, CHAT_PROMPT, CODE_NAME, CODE_PROMPT, CODE_REQUEST, CODE_REQUEST_NAME, demo_task

    if chat:
        return [(CHAT_NAME, chat_prompt_ids(tokenizer, CHAT_PROMPT), None, f"user: {CHAT_PROMPT}"),
                (CODE_REQUEST_NAME, chat_prompt_ids(tokenizer, CODE_REQUEST), None, f"user: {CODE_REQUEST}")]
    task = demo_task(families)
    code_ids = tokenizer.encode(CODE_PROMPT, add_special_tokens=False, split_special_tokens=True)
    task_ids = tokenizer.encode(format_prompt(task), add_special_tokens=False)
    return [(CODE_NAME, code_ids, None, tokenizer.decode(code_ids)),
            (f"task ({task.family}, held out)", task_ids, task, tokenizer.decode(task_ids))]


def describe(loaded, families: list[str] | None) -> str:
    """One line: the model, its size, and what it was trained for (from its config, or the
    description of an assembled model)."""
    from ..assembly import ASSEMBLY_FILE, read_assembly

    base = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" not in n)  # the drafter aside
    line = f"{loaded.name}: {base / 1e6:.1f}M parameters"
    if loaded.is_vlm:
        line += ", a vision-language model (text model + vision tower)"
    if families:  # written by `trimode train`, which trains on stdlib code and these task families
        line += f", trained on Python stdlib code and synthetic tasks ({', '.join(families)}); not a chat model"
    elif (loaded.path / ASSEMBLY_FILE).is_file() and (description := read_assembly(loaded.path).description):
        line += f", {description}"
    return line


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.prompts import trained_families

    started = time.perf_counter()
    loaded = load_model(args, need="to encode its prompts")
    model = loaded.model
    families = trained_families(model.config)
    print(describe(loaded, families))
    print(f"({loaded.path}; LoRA drafter: {'yes' if loaded.has_drafter else 'no'}; "
          f"{next(model.parameters()).dtype}; threads: {torch.get_num_threads()})\n")
    if loaded.is_vlm:
        rows = image_rows(loaded, args)
    else:
        rows = text_rows(loaded, args, families)
        vlm = shipped_vlm() if args.model is None else None  # a model the user named is the only one shown
        if vlm is not None:
            vlm_args = argparse.Namespace(**{**vars(args), "model": str(vlm)})
            shown = load_model(vlm_args, need="to encode its prompts")
            print(f"The image prompt is answered by {shown.name}, the shipped vision-language model ({vlm}).\n")
            rows += image_rows(shown, args)
    print(stats_table(rows, COLUMNS))
    print(f"\n{STATS_LEGEND}\n(done in {time.perf_counter() - started:.1f}s)")
    print("To see what each forward did: trimode generate --trace out.html \"PROMPT\" (a page), or "
          "trimode serve and open http://127.0.0.1:8000/ (the playground).")
    return 0


def text_rows(loaded, args: argparse.Namespace, families: list[str] | None) -> list[dict]:
    """Run the text prompts (:func:`demo_prompts`) in every mode, printing each text; the table's rows."""
    from ..data.tasks import score
    from ..evaluation.accuracy import answer_budget
    from ..evaluation.prompts import is_chat_model

    model, tok = loaded.model, loaded.tokenizer
    rows = []
    for name, ids, task, shown in demo_prompts(tok, families, is_chat_model(model.config, tok)):
        print(f"##### {name}\n{shown}")
        for mode in MODE_CHOICES:
            # chat and code: a fixed length; the task: room for its whole answer in every mode, as in eval
            default = CODE_TOKENS if task is None else answer_budget(tok, task)
            kwargs = dict(max_new_tokens=args.max_new_tokens or default, return_stats=True)
            if args.block_length:
                kwargs["block_length"] = args.block_length
            out, nfe, stats = model.decode_mode(mode, [ids], **kwargs)
            text = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
            print(f"--- {mode}\n{text}")
            rows.append({"prompt": name.split()[0], **stats_row(mode, nfe, stats),
                         "correct": None if task is None else ("yes" if score(task, text) else "no")})
        print()
    return rows


def shipped_vlm() -> Path | None:
    """The shipped vision-language model's directory when it is there (has a config.json), else None."""
    from ..loading import SHIPPED_MODELS

    path = SHIPPED_MODELS / SHIPPED_VLM_NAME
    return path if (path / "config.json").is_file() else None


def demo_image_task(config):
    """One held-out image task: a bar chart, unless the model was trained on other kinds (its config's
    ``image_task_kinds``), then the first of those."""
    from ..image_tasks import HELDOUT_SEED, KINDS, make_tasks

    kinds = getattr(config, "image_task_kinds", None) or KINDS
    return make_tasks(1, HELDOUT_SEED, [IMAGE_KIND if IMAGE_KIND in kinds else kinds[0]])[0]


def image_rows(loaded, args: argparse.Namespace) -> list[dict]:
    """Run one held-out image task (its PNG saved for the reader) in every mode on the VLM ``loaded``,
    printing each text; the table's rows, "correct" as facts right / facts asked."""
    from ..evaluation.accuracy import answer_budget
    from ..evaluation.image_eval import decode_image, task_inputs
    from ..image_tasks import score

    loaded.require_image_support()  # a VLM whose tokenizer has no image token: say what to set
    model, tok = loaded.model, loaded.tokenizer
    task = demo_image_task(model.config)
    image = Path(tempfile.gettempdir()) / f"trimode-demo-{task.kind}.png"
    task.image.save(image)
    print(f"##### image task ({task.kind}, held out)\nimage: {image}\nuser: {task.question}")
    inputs = task_inputs(tok, task, model.config, loaded.image_processor)
    kwargs = {"block_length": args.block_length} if args.block_length else {}
    rows = []
    for mode in MODE_CHOICES:  # room for the whole answer in every mode, as in eval
        ids, nfe, stats = decode_image(model, mode, inputs, args.max_new_tokens or answer_budget(tok, task),
                                       **kwargs)
        text = tok.decode(ids, skip_special_tokens=True)
        print(f"--- {mode}\n{text}")
        facts = score(task, text)
        rows.append({"prompt": "image", **stats_row(mode, nfe, stats),
                     "correct": f"{facts['correct']}/{facts['total']}"})
    print()
    return rows
