"""The in-run baseline: the model's AR pathway as a stock ``transformers`` causal LM.

Speed claims are only worth something against a baseline measured in the same
run, on the same machine, with the same weights. :class:`TransformersBaseline`
exports the AR pathway with :func:`trimode.export.export_transformers`
into a temporary directory and loads it back with
``AutoModelForCausalLM.from_pretrained`` (``LlamaForCausalLM``, or
``Ministral3ForCausalLM`` for models with the llama-4 query scaling): what any
``transformers`` user would run. Its ``generate()`` is timed on the same prompts, interleaved call by call
with trimode's runs by the bench.

Design choices:

- Same token count: each prompt is generated for exactly as many tokens as
  trimode's AR produced for it (``max_new_tokens = n``, ``min_new_tokens =
  n - 1``: an EOS cannot end it early, but may be the last token, as in
  trimode's run), so tokens/s compare like for like. At batch > 1
  every row runs ``max(n)`` steps, as trimode's batch does (finished rows are
  carried along); only the rows' own ``n`` tokens are counted, for both.
- Batches are left-padded with an attention mask (what ``generate()`` expects).
- :meth:`matches` checks at batch 1 that the baseline emits trimode AR's
  tokens: proof that the two engines run the same model.
- Memory: the reloaded copy holds a second set of weights (fine for the small
  models this harness targets on CPU).
"""

from __future__ import annotations

import tempfile
import time

import torch

from .metrics import RunRecord


class TransformersBaseline:
    """A transformers causal LM loaded from a temporary export of ``model``'s AR pathway."""

    def __init__(self, model):
        from transformers import AutoModelForCausalLM, GenerationConfig

        from ..export import export_transformers

        param = next(model.parameters())
        with tempfile.TemporaryDirectory(prefix="trimode-baseline-") as tmp:
            export_transformers(model, None, tmp)
            self.hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=param.dtype).to(param.device).eval()
        cfg = model.config
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.eos_ids = list(cfg.eos_token_ids)
        self.device = param.device
        self._generation_config = GenerationConfig
        self.name = type(self.hf).__name__

    def generate(self, prompts: list[list[int]], new_tokens: list[int]) -> RunRecord:
        """Greedy ``generate()`` of ``max(new_tokens)`` tokens per row; row b is credited ``new_tokens[b]``."""
        if len(new_tokens) != len(prompts):
            raise ValueError(f"{len(new_tokens)} token counts for {len(prompts)} prompts")
        n = max(new_tokens)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        # EOS is suppressed until the last step only: the run lasts n steps, and a row that
        # trimode ended with EOS at step n gets that EOS here too (so outputs can match).
        config = self._generation_config(do_sample=False, max_new_tokens=max(n, 1), min_new_tokens=max(n - 1, 0),
                                         pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.hf.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                   generation_config=config) if n else ids
        wall = time.perf_counter() - start
        generated = [out[b, width:width + k].tolist() for b, k in enumerate(new_tokens)]
        return RunRecord("transformers", prompts, generated, wall, None)

    @staticmethod
    def matches(baseline: RunRecord, reference: RunRecord) -> bool:
        """The baseline's tokens equal the reference run's (meaningful at batch 1, greedy)."""
        return baseline.generated == reference.generated
