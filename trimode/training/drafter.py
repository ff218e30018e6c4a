"""The LoRA drafter of linear self-speculation: self-distillation of AR greedy continuations.

The drafter is a PEFT LoRA adapter, by default on every ``o_proj`` (the published
``target_modules=["o_proj"]``; ``drafter.target_modules`` may name any of the seven
projections), switched on only in draft forwards; the base is frozen,
so verification (and therefore the output) never changes, only acceptance rises.

Objective **(ours; the published one is not public)**: for prompts (code prefixes, chat-style
instructions, task prompts), the frozen model's own AR greedy continuation ``c_0 c_1 ...`` is the target. A
linear-speculation cycle whose pending token is ``c_j`` drafts from

    prefix  = prompt + c_0 .. c_{j-1}       keys/values from the adapter-free model (cache)
    block   = [c_j, MASK * (B-1)]           peek forward, bidirectional, adapter ON,
                                            positions len(prefix) .. len(prefix)+B-1

and should predict ``c_{j+1} .. c_{j+B-1}`` at the masks: cross-entropy there. This is
exactly the draft forward of ``LinearSpeculation`` (``Runner.peek_block(drafter=True)``).

Batching: one causal write forward of the adapter-free model over the whole clean
sequence fills a :class:`~trimode.cache.KVCache` (no grad); then one peek forward holds
``blocks_per_sequence`` blocks at random cut points j, each seeing the cache slots of its
own prefix (``< len(prompt) + j``) and its own block (:func:`draft_attention_mask`). A
single uncached forward over prefix + blocks would be cheaper but wrong: the adapter
would then change the prefix keys/values of layers >= 1, which at inference come from
the adapter-free model.

Targets are generated once per run (batched ``ar_generate``, adapter off) and cached in
``OUT/drafter_data.safetensors``, keyed by a fingerprint of the base weights and the
generation settings, so a resumed run reuses them.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..cache import KVCache
from ..data.corpus import CodeCorpus
from ..data.instructions import sample_instructions
from ..data.tasks import format_user_turn, iter_tasks
from ..tokenization import chat_prompt_ids
from .config import DrafterConfig, TrainConfig
from .data import DRAFTER_TASK_SEED, encode_code, families, generator_for, pad_id
from .objectives import Prepared, Terms

DATA_FILE = "drafter_data.safetensors"


def lora_shape(cfg: DrafterConfig, hidden_size: int) -> tuple[int, int]:
    """(r, alpha): the published r=128 / alpha=512 at hidden 4096, scaled to the model's width."""
    r = cfg.r if cfg.r is not None else max(4, min(128, hidden_size // 32))
    alpha = cfg.alpha if cfg.alpha is not None else 4 * r
    return r, alpha


def attach_drafter(model: torch.nn.Module, cfg: DrafterConfig, seed: int, target_modules: str | None = None):
    """Inject a fresh LoRA adapter on ``cfg.target_modules`` (base frozen). Returns the PeftModel (for saving).

    ``target_modules``: a PEFT regex over module names instead (a VLM's: the text layers' projections
    only, not the vision tower's). LoRA B starts at zero, so the untrained drafter drafts exactly like
    the base model.
    """
    from peft import LoraConfig, get_peft_model

    r, alpha = lora_shape(cfg, model.config.hidden_size)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=cfg.dropout,
                      target_modules=target_modules or list(cfg.target_modules), bias="none")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # PEFT draws LoRA A from the global RNG: make it the seed's
        # PEFT calls a transformers API deprecated in v5 (is_gradient_checkpointing); harmless here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    return peft_model


# ------------------------------------------------------------------ distillation data
def drafter_prompts(tokenizer, cfg: TrainConfig, split: str, n: int) -> list[list[int]]:
    """``n`` prompts: code prefixes, chat-style instructions, then task prompts (the shares of
    ``drafter.code_prompt_fraction`` and ``instruction_fraction``), deterministic per (seed, split)."""
    d = cfg.drafter
    max_len = cfg.seq_len - d.gen_tokens
    rng = random.Random(f"{cfg.seed}:drafter-prompts:{split}")
    n_code = round(n * d.code_prompt_fraction)
    code: list[list[int]] = []
    files = list(CodeCorpus(split, max_files=cfg.max_files).texts()) if n_code else []
    files = [f for f in files if f.strip()]
    lo, hi = d.code_prompt_tokens
    while files and len(code) < n_code:  # one window per file per pass, more passes if needed
        for text in files:
            ids = encode_code(tokenizer, text)
            length = min(rng.randint(lo, hi), max_len, len(ids))
            start = rng.randint(0, len(ids) - length)
            code.append(ids[start:start + length])
            if len(code) == n_code:
                break
    n_inst = round(n * d.instruction_fraction)
    texts = sample_instructions(split, n_inst, cfg.seed, cfg.max_files) if n_inst else []
    chat = [_chat_ids(tokenizer, text)[-max_len:] for text in texts]
    tasks = iter_tasks(split, cfg.seed + DRAFTER_TASK_SEED, families(cfg))
    prompts = [_chat_ids(tokenizer, next(tasks).prompt)[-max_len:] for _ in range(n - len(code) - len(chat))]
    return code + chat + prompts


def _chat_ids(tokenizer, text: str) -> list[int]:
    """A user turn as the model's own chat template renders it (a converted chat model's), else
    in trimode's chat format (a tokenizer trained by trimode renders exactly that)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt_ids(tokenizer, text)
    return tokenizer.encode(format_user_turn(text), add_special_tokens=False)




@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], gen_tokens: int, batch: int,
                         label: str | None = None) -> list[list[int]]:
    """The model's own AR greedy continuation of each prompt (up to and including EOS).

    ``label``: print one progress line per batch to stderr under that name (generating the
    targets of a large model takes minutes before the first training step)."""
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        ids, _, stats = model.ar_generate(chunk, max_new_tokens=gen_tokens, return_stats=True)
        for row, p, n in zip(ids.tolist(), chunk, stats.tokens_per_row):
            out.append(row[len(p):len(p) + n])
        if label:
            print(f"{label}: {len(out)}/{len(prompts)} prompts continued ({time.perf_counter() - started:.0f}s)",
                  file=sys.stderr, flush=True)
    model.train(was_training)
    return out


def pack_samples(prompts: list[list[int]], continuations: list[list[int]], seq_len: int,
                 pad: int) -> dict[str, torch.Tensor]:
    """Fixed-shape samples: tokens (N, seq_len) = prompt + continuation + pad, with their lengths."""
    n = len(prompts)
    tokens = torch.full((n, seq_len), pad, dtype=torch.long)
    prompt_length = torch.zeros(n, dtype=torch.long)
    length = torch.zeros(n, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        row = (p + c)[:seq_len]
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        prompt_length[i], length[i] = len(p), len(row)
    return {"tokens": tokens, "prompt_length": prompt_length, "length": length}


def fingerprint(model: torch.nn.Module, cfg: TrainConfig) -> str:
    """Identity of the distillation data: base weights + every setting that changes the samples."""
    h = hashlib.sha256()
    settings = {"drafter": {k: v for k, v in cfg.to_dict()["drafter"].items()
                            if k not in ("r", "alpha", "dropout", "blocks_per_sequence", "block_length")},
                "seq_len": cfg.seq_len, "seed": cfg.seed, "max_files": cfg.max_files,
                "task_families": cfg.task_families}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_cached_data(cache_file: Path | None, key: str) -> dict[str, dict[str, torch.Tensor]] | None:
    """The {"train", "eval"} samples saved in ``cache_file`` under fingerprint ``key``, or None."""
    if cache_file is None or not cache_file.is_file():
        return None
    with safe_open(cache_file, "pt") as f:
        if (f.metadata() or {}).get("fingerprint") != key:
            return None
        flat = {k: f.get_tensor(k) for k in f.keys()}
    return {split: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(split + ".")}
            for split in ("train", "eval")}


def write_cached_data(cache_file: Path, key: str, data: dict[str, dict[str, torch.Tensor]]) -> None:
    """Save ``data`` under fingerprint ``key`` (atomically: a crash never leaves half a file)."""
    flat = {f"{split}.{k}": v for split, s in data.items() for k, v in s.items()}
    tmp = cache_file.with_suffix(".tmp")
    save_file(flat, tmp, metadata={"fingerprint": key})
    tmp.replace(cache_file)


def distillation_data(model, tokenizer, cfg: TrainConfig, cache_file: Path | None,
                      write: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{"train": samples, "eval": samples}, from ``cache_file`` when its fingerprint matches."""
    key = fingerprint(model, cfg)
    cached = read_cached_data(cache_file, key)
    if cached is not None:
        return cached
    d = cfg.drafter
    data = {}
    for split, source, n in (("train", "train", d.n_prompts), ("eval", "heldout", d.n_eval_prompts)):
        prompts = drafter_prompts(tokenizer, cfg, source, n) if n else []
        conts = greedy_continuations(model, prompts, d.gen_tokens, d.gen_batch,
                                     label=f"drafter data ({split})") if prompts else []
        data[split] = pack_samples(prompts, conts, cfg.seq_len, pad_id(tokenizer))
    if write and cache_file is not None:
        write_cached_data(cache_file, key, data)
    return data


# ------------------------------------------------------------------ the draft forward
def draft_attention_mask(prefix_length: torch.Tensor, cached: int, block: int) -> torch.Tensor:
    """Full mask (b, 1, Q, cached + Q) of a peek forward holding several draft blocks.

    prefix_length: (b, n_blocks) visible cache slots of each block (``len(prompt) + j``).
    Query q belongs to block q // block; it sees cache slots < its prefix length and the
    new slots of its own block (bidirectional), as ``with_prefix(block_pattern)`` at inference.
    """
    b, n_blocks = prefix_length.shape
    Q = n_blocks * block
    dev = prefix_length.device
    slot = torch.arange(cached + Q, device=dev)  # (K,)
    q_block = torch.arange(Q, device=dev) // block  # (Q,)
    in_prefix = slot[None, None, :] < prefix_length[:, q_block][:, :, None]  # (b, Q, K)
    new = slot - cached
    own_block = (new[None, :] >= 0) & (new[None, :].div(block, rounding_mode="floor") == q_block[:, None])  # (Q, K)
    return (in_prefix | own_block[None])[:, None]


def draft_logits(model, engine, tokens: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor,
                 prefix_length: torch.Tensor, block: int, prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (b, Q, V) of the draft blocks, with prefix states exactly as at inference.

    model: the (adapter-carrying) TrimodeModel; engine: what the grad forward runs through
    (the model, or its DDP wrapper). tokens (b, T) clean sequences; blocks/positions (b, Q).
    prefix_embeds: (b, T, hidden) input embeddings of ``tokens`` (a VLM's, with its images), or None.
    """
    b, T = tokens.shape
    cache = KVCache.for_model(model, b, T + blocks.shape[1])
    with torch.no_grad():
        model(tokens, past_key_values=cache, inputs_embeds=prefix_embeds)  # causal write, adapter off: the prefix
    mask = draft_attention_mask(prefix_length, T, block)
    return engine(blocks, position_ids=positions, attention_mask=mask, past_key_values=cache, cache_write=False,
                  use_drafter=True).logits


class DrafterObjective:
    """CE of the draft pass at masked positions against the AR greedy continuation."""

    stat_names = ("draft_sum", "n_draft", "draft_correct")

    def __init__(self, cfg: TrainConfig, model, device: torch.device):
        self.cfg = cfg
        self.model = model
        self.device = device
        self.block = cfg.drafter.block_length or model.config.block_size
        self.mask_id = model.config.mask_token_id

    def prepare(self, batch, step, first_index, purpose) -> Prepared:
        tokens, P, length = batch["tokens"], batch["prompt_length"], batch["length"]
        b, B, nb = tokens.shape[0], self.block, self.cfg.drafter.blocks_per_sequence
        cut = torch.zeros(b, nb, dtype=torch.long)
        valid = torch.zeros(b, nb, dtype=torch.bool)
        for i in range(b):
            n_cuts = int(length[i] - P[i]) - 1  # cut j needs c_{j+1}: j in [0, n_gen - 2]
            if n_cuts <= 0:
                continue
            g = generator_for(self.cfg.seed, purpose, step, first_index + i)
            pick = torch.randperm(n_cuts, generator=g)[:nb]
            cut[i, :len(pick)], valid[i, :len(pick)] = pick, True
        start = P[:, None] + cut  # (b, nb): position of the pending token c_j
        offs = torch.arange(B)
        pos = start[:, :, None] + offs  # (b, nb, B)
        blocks = torch.full((b, nb, B), self.mask_id, dtype=torch.long)
        blocks[:, :, 0] = tokens.gather(1, start)
        src = pos.clamp(max=tokens.shape[1] - 1).reshape(b, -1)
        targets = tokens.gather(1, src).view(b, nb, B)
        keep = (offs[None, None, :] >= 1) & (pos < length[:, None, None]) & valid[:, :, None]
        targets = targets.masked_fill(~keep, -100)
        inputs = {"tokens": tokens, "blocks": blocks.view(b, -1), "positions": pos.view(b, -1),
                  "prefix_length": start, "targets": targets.view(b, -1)}
        return Prepared({k: v.to(self.device) for k, v in inputs.items()}, count=int(keep.sum()),
                        tokens=b * nb * B)

    def terms(self, engine, prepared) -> Terms:
        return self.draft_terms(engine, prepared)

    def draft_terms(self, engine, prepared, prefix_embeds: torch.Tensor | None = None) -> Terms:
        """The draft CE sums; ``prefix_embeds``: the clean sequences' input embeddings (a VLM's), or None."""
        x = prepared.inputs
        logits = draft_logits(self.model, engine, x["tokens"], x["blocks"], x["positions"], x["prefix_length"],
                              self.block, prefix_embeds).float()  # (b, Q, V)
        targets = x["targets"]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                             reduction="sum")
        keep = targets != -100
        correct = (logits.argmax(-1) == targets)[keep].sum().item()
        return Terms(ce, [ce.item(), float(prepared.count), float(correct)])

    def summarize(self, sums):
        n = sums["n_draft"]
        return {"draft_loss": sums["draft_sum"] / n if n else float("nan"),
                "draft_accuracy": sums["draft_correct"] / n if n else float("nan")}
