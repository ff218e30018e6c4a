"""A tiny random tri-mode model directory, for tests and load-test dry runs without the shipped model.

``build_tiny_model_dir(path)`` trains a small byte-level BPE tokenizer on a
few short texts and saves it beside a random :class:`~trimode.TrimodeModel`
sized to it, in the layout :func:`trimode.loading.load` opens. Weights are
drawn with a large scale so logits are spread out: greedy argmax ties never
decide a test, and batched and unbatched decoding pick the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Short, varied texts: enough for a few hundred BPE merges, instant to train on.
_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "for i in range(10):\n    print(i * i)\n",
    "Tri-mode models decode autoregressively, by block diffusion, or by self-speculation.",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "Hello, world! Ça va? 你好, мир. 12345 + 67890 = 80235",
    "import os\nimport sys\n\nprint(os.getcwd(), sys.argv)\n",
]


def build_tiny_model_dir(path: str | Path, vocab_size: int = 320, context: int = 512, hidden: int = 32,
                         layers: int = 2, block_size: int = 4, seed: int = 0, std: float = 0.6) -> Path:
    """Write tokenizer + random model to ``path`` and return it."""
    import trimode
    from trimode.modeling import scaled_init_
    from trimode.tokenization import train_tokenizer

    path = Path(path)
    tokenizer = train_tokenizer(_TEXTS * 4, vocab_size=vocab_size, min_frequency=1)
    config = trimode.TrimodeConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, mask_token_id=3,
        eos_token_id=2, pad_token_id=0, bos_token_id=1, block_size=block_size,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    model = trimode.TrimodeModel(config).eval()
    scaled_init_(model, std, torch.Generator().manual_seed(seed))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":  # python tests/serving/tiny_model_dir.py DIR
    import sys

    print(build_tiny_model_dir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/trimode-tiny-random"))
