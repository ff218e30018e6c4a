"""Evaluation and benchmark harness: honest metrics, a baseline in the same run, plots.

- :mod:`.metrics`      timed decoding calls and the pooled metrics (nfe, TPF, acceptance, tokens/s), defined once
- :mod:`.sol`          SOL: the oracle diffusion sampler and its TPF
- :mod:`.forward_costs`  ``trimode bench --forward-costs``: the k-token forward cost curve and the roofline
- :mod:`.baseline`     the AR pathway as a stock ``transformers`` causal LM, timed in the same run
- :mod:`.prompts`      seeded held-out prompt sets (tasks, code, HumanEval)
- :mod:`.accuracy`     ``trimode eval``: accuracy per mode, share identical to AR greedy
- :mod:`.humaneval`    ``trimode eval --humaneval``: HumanEval pass@1 per mode, agreement with AR greedy
- :mod:`.bench`        ``trimode bench``: every mode, SOL, sweeps, auto block length
- :mod:`.bench_config` what ``trimode bench`` measures (:class:`~.bench_config.BenchConfig`)
- :mod:`.interleave`   interleaved timed rounds over settings, so noise hits every setting alike
- :mod:`.report`, :mod:`.plots`   markdown / JSON / PNG output
- :mod:`.environment`  the manifest every report starts with
- :mod:`.cliargs`      argument helpers of the `trimode eval` / `trimode bench` commands

Submodules are imported on use (``transformers`` and ``matplotlib`` are slow
to import). ``block_length="auto"`` is decoding policy: :mod:`trimode.generation.autotune`.
"""
