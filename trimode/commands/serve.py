"""``trimode serve``: the OpenAI-compatible HTTP server (see :mod:`trimode.serving`).

The flags are generated from :class:`trimode.serving.config.ServerConfig` by
:class:`~trimode.commands.config_flags.ConfigFlags`: names, types, bounds,
choices, defaults and help all come from its fields; :data:`FLAGS` lists only
where the command line departs from the field names. The server itself is
imported only when the command runs, so the other subcommands work without the
serving extras installed.
"""

from __future__ import annotations

import argparse

from .common import add_model_arguments, load_model, resolve_threads, threshold_value
from .config_flags import NO_FLAG, ConfigFlags, Flag

SERVING_EXTRAS = "fastapi>=0.110 uvicorn>=0.29 prometheus-client>=0.20"

DESCRIPTION = ("Serve a tri-mode model over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
               "/v1/models, /health, /metrics). Requests pick a decoding mode with the extra body field `mode`; "
               "--mode is the default.")


def _threshold(text: str) -> float | str | None:
    """--threshold: a number in (0, 1], 'none' (the fixed schedule) or 'model' (the model config's)."""
    return "model" if text.lower() == "model" else threshold_value(text)


FLAGS = {
    # --model and --threads come from add_model_arguments, as in every command that loads a model
    "model": Flag(shared=True),
    "num_threads": Flag(name="--threads", shared=True),
    "request_timeout": Flag(name="--timeout"),
    "threshold": Flag(type=_threshold),
    "auto.max_load_for_spec": Flag(name="--auto-max-load"),
    "auto.load_cooldown": Flag(metavar="SECONDS"),
    "auto.acceptance_floor": Flag(metavar="TOKENS"),
    # no flags: they follow --auto-window and --auto-probe-every (see config_from_args)
    "auto.min_samples": NO_FLAG,
    "auto.max_probe_every": NO_FLAG,
}
"""Where a flag departs from its field (see :mod:`trimode.commands.config_flags`), by field path."""


def server_flags() -> ConfigFlags:
    from ..serving.config import ServerConfig  # pydantic only: no server (or torch) imports

    return ConfigFlags(ServerConfig, FLAGS)


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API", description=DESCRIPTION)
    add_model_arguments(p)
    server_flags().add_to(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~trimode.serving.config.ServerConfig` the flags describe (validated)."""
    from ..serving.config import AutoModeConfig

    flags = server_flags()
    values = flags.values(args)
    # The settings without a flag follow the ones with: with their defaults, a small --auto-window or a
    # large --auto-probe-every would break min_samples <= window or max_probe_every >= probe_every.
    auto = AutoModeConfig.model_fields
    values["auto.min_samples"] = min(auto["min_samples"].default, values["auto.window"])
    values["auto.max_probe_every"] = max(auto["max_probe_every"].default, values["auto.probe_every"])
    return flags.build(values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        from ..serving import serve
    except ModuleNotFoundError as e:
        raise ValueError(f"`trimode serve` needs the serving packages ({e.name} is missing): "
                         f"pip install {SERVING_EXTRAS}") from None
    config.num_threads = resolve_threads(args)  # the decoding worker sets it on its own thread
    serve(config, load_model(args))
    return 0
