"""``trimode serve``: the OpenAI-compatible HTTP server (see :mod:`trimode.serving`).

The flags map one to one onto :class:`trimode.serving.config.ServerConfig`;
the server itself is imported only when the command runs, so the other
subcommands work without the serving extras installed.
"""

from __future__ import annotations

import argparse

from ..generation.names import SPECULATIVE_MODES
from .common import (MODE_CHOICES, add_model_arguments, load_model, non_negative_float, non_negative_int,
                     positive_int, resolve_threads, threshold_value)

SERVING_EXTRAS = "fastapi>=0.110 uvicorn>=0.29 prometheus-client>=0.20"


def _port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def register(sub) -> None:
    from ..serving.config import AutoModeConfig, ServerConfig  # dataclasses only: no server imports

    d, a = ServerConfig(), AutoModeConfig()
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a tri-mode model over an OpenAI-compatible API (/v1/completions, "
                                   "/v1/chat/completions, /v1/models, /health, /metrics). Requests pick a "
                                   "decoding mode with the extra body field `mode`; --mode is the default.")
    add_model_arguments(p)
    p.add_argument("--mode", choices=["auto"] + MODE_CHOICES, default=d.mode,
                   help="default mode of requests that do not name one (default: %(default)s)")
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=_port, default=d.port, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--served-model-name", default=None, help="model id clients use (default: the directory name)")
    p.add_argument("--max-batch-size", type=positive_int, default=d.max_batch_size,
                   help="most requests decoded together (default: %(default)s)")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help="most waiting requests before answering 429 (default: %(default)s)")
    p.add_argument("--batch-wait", type=non_negative_float, default=d.batch_wait,
                   help="seconds to wait for more requests before a batch starts (default: %(default)s)")
    p.add_argument("--refill-wait", type=non_negative_float, default=d.refill_wait,
                   help="after a batch of n rows, wait for its n clients' next requests, besides those already "
                        "waiting, while they keep arriving (this quiet gap in seconds), so returning clients "
                        "share one batch (default: %(default)s)")
    p.add_argument("--timeout", type=non_negative_float, default=d.request_timeout,
                   help="per-request timeout in seconds, queueing included (default: %(default)s)")
    p.add_argument("--max-tokens-limit", type=positive_int, default=d.max_tokens_limit,
                   help="largest max_tokens accepted (default: %(default)s)")
    p.add_argument("--default-max-tokens", type=positive_int, default=d.default_max_tokens,
                   help="max_tokens of requests that omit it (default: %(default)s)")
    p.add_argument("--block-length", type=positive_int, default=None,
                   help="default block length (default: the model config's block_size)")
    p.add_argument("--max-block-length", type=positive_int, default=d.max_block_length,
                   help="largest per-request block_length (default: %(default)s)")
    p.add_argument("--threshold", type=threshold_value, default=argparse.SUPPRESS,
                   help="default diffusion threshold in (0, 1], or 'none' for the fixed schedule "
                        "(default: the model config's)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the server's sampling generator")
    p.add_argument("--log-level", default=d.log_level,
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    g = p.add_argument_group("auto mode", "how `mode: auto` chooses between self-speculation and AR")
    g.add_argument("--auto-spec-mode", choices=SPECULATIVE_MODES, default=a.spec_mode,
                   help="speculative mode auto uses (default: %(default)s)")
    g.add_argument("--auto-max-load", type=non_negative_int, default=a.max_load_for_spec,
                   help="speculate only while at most this many requests wait (default: %(default)s)")
    g.add_argument("--auto-load-cooldown", type=non_negative_float, default=a.load_cooldown, metavar="SECONDS",
                   help="after the queue was deep, stay on AR this long (default: %(default)s)")
    g.add_argument("--auto-acceptance-floor", type=non_negative_float, default=a.acceptance_floor, metavar="TOKENS",
                   help="fall back to AR when the rolling mean acceptance length (tokens per verification "
                        "cycle) is below this (default: measured at start, where speculation breaks even with "
                        "AR on this machine: about 2 on a GPU, more on a CPU, where a block's forward costs more "
                        "than one token's)")
    g.add_argument("--auto-window", type=positive_int, default=a.window,
                   help="verification cycles in the rolling acceptance (default: %(default)s)")
    g.add_argument("--auto-probe-every", type=positive_int, default=a.probe_every,
                   help="while below the floor, speculate on the Nth auto batch to re-measure acceptance; the "
                        "interval doubles while acceptance stays low (default: %(default)s)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~trimode.serving.config.ServerConfig` the flags describe (validated)."""
    from ..serving.config import AutoModeConfig, ServerConfig

    d = ServerConfig()
    auto = AutoModeConfig(spec_mode=args.auto_spec_mode, max_load_for_spec=args.auto_max_load,
                          load_cooldown=args.auto_load_cooldown,
                          acceptance_floor=args.auto_acceptance_floor, window=args.auto_window,
                          min_samples=min(AutoModeConfig.min_samples, args.auto_window),
                          probe_every=args.auto_probe_every,
                          max_probe_every=max(AutoModeConfig.max_probe_every, args.auto_probe_every))
    return ServerConfig(model=args.model, mode=args.mode, host=args.host, port=args.port,
                        served_model_name=args.served_model_name, max_batch_size=args.max_batch_size,
                        max_queue=args.max_queue, batch_wait=args.batch_wait, refill_wait=args.refill_wait,
                        request_timeout=args.timeout,
                        max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
                        block_length=args.block_length, max_block_length=args.max_block_length,
                        threshold=getattr(args, "threshold", d.threshold), num_threads=args.threads, seed=args.seed,
                        log_level=args.log_level, auto=auto).validate()


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
