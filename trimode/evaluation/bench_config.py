"""What ``trimode bench`` measures: :class:`BenchConfig` and the seconds-long :func:`quick_config`.

Kept apart from the runner (:mod:`.bench`) so the options can be read, built and
validated without the sections that use them; :mod:`.bench` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation.autotune import AutotuneConfig
from ..generation.names import MODE_NAMES
from .prompts import PROMPT_SETS


# The defaults are sized for a run of a few minutes with a model of a few million parameters on
# a 2-core CPU; --quick (quick_config) shrinks every size for tests and smoke runs.
@dataclass
class BenchConfig:
    """What ``trimode bench`` measures."""

    prompt_sets: list[str] = field(default_factory=lambda: ["tasks", "code"])
    """Prompt sets: held-out task prompts and/or held-out code prefixes."""
    n_prompts: int = 6
    """Prompts per set in the main table."""
    sweep_prompts: int = 4
    """Task prompts used by the sweeps and the auto block length (the first of the set)."""
    seed: int = 0
    """Seed of the prompt sets."""
    max_new_tokens: int = 64
    """New tokens per prompt (rows also stop at EOS)."""
    code_prompt_tokens: int = 64
    """Length of each code prompt, in tokens."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    """Batch sizes of the main table."""
    modes: list[str] = field(default_factory=lambda: list(MODE_NAMES))
    """Modes of the main table (AR always runs: it is the reference)."""
    block_length: int | None = None
    """Block length of the main table (None: the model's config)."""
    threshold: float | None = None
    """Diffusion threshold of the main table (None: the model's config)."""
    thresholds: list[float | None] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9, 0.95])
    """Diffusion thresholds of the threshold sweep (None: fixed schedule). Empty: no sweep."""
    block_lengths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Block lengths of the block sweep. Empty: no sweep."""
    quadratic_max_block: int = 8
    """Largest block the quadratic mode runs in the sweep (its forward is B*(B+1) tokens)."""
    baseline: bool = True
    """Time transformers generate() on the same weights."""
    sol: bool = True
    """Compute the SOL (oracle) TPF."""
    autotune: bool = True
    """Pick the block length with block_length='auto' and measure its gain."""
    autotune_config: AutotuneConfig = field(default_factory=AutotuneConfig)
    repeats: int = 1
    """Timed rounds per batch of prompts (interleaved); more rounds, less noise."""
    warmup: bool = True
    """One short untimed call per engine first."""
    plots: bool = True
    """Write PNG plots (matplotlib)."""

    def validate(self) -> "BenchConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(bool(self.prompt_sets) and all(p in PROMPT_SETS for p in self.prompt_sets),
             f"prompt_sets={self.prompt_sets!r}: each must be one of {', '.join(PROMPT_SETS)}")
        need(bool(self.modes) and all(m in MODE_NAMES for m in self.modes),
             f"modes={self.modes!r}: each must be one of {', '.join(MODE_NAMES)}")
        for name in ("n_prompts", "sweep_prompts", "max_new_tokens", "code_prompt_tokens", "quadratic_max_block",
                     "repeats"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)!r} must be >= 1")
        need(bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
             f"batch_sizes={self.batch_sizes!r} must be positive integers")
        need(all(b >= 1 for b in self.block_lengths), f"block_lengths={self.block_lengths!r} must be >= 1")
        need(self.block_length is None or self.block_length >= 1, f"block_length={self.block_length} must be >= 1")
        for t in list(self.thresholds) + [self.threshold]:
            need(t is None or 0 < t <= 1, f"threshold {t} must be in (0, 1] (or none for the fixed schedule)")
        self.autotune_config.validate()
        return self


def quick_config(**overrides) -> BenchConfig:
    """A seconds-long configuration (tests, smoke runs): same sections, tiny sizes."""
    kw = dict(n_prompts=2, sweep_prompts=2, max_new_tokens=12, code_prompt_tokens=24, batch_sizes=[1, 2],
              thresholds=[0.5, 0.9], block_lengths=[2, 4], quadratic_max_block=4,
              autotune_config=AutotuneConfig(candidates=(1, 2, 4), diffusion_candidates=(1, 2, 4), repeats=3,
                                             time_budget=0.2, calibration_tokens=12))
    kw.update(overrides)
    return BenchConfig(**kw)
