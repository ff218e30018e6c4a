"""The decoding modes' names, importable without torch.

The command line builds its parsers (``--mode`` choices) from these names before any
command runs, so this module imports nothing; :mod:`.modes` maps each name to its
strategy and re-exports both tuples.
"""

MODE_NAMES = ("ar", "diffusion", "linear-spec", "quadratic-spec")
"""The decoding modes' names, in the order reports and the CLI list them."""
SPECULATIVE_MODES = ("linear-spec", "quadratic-spec")
"""The modes that draft and verify with the AR pathway (lossless at temperature 0)."""
