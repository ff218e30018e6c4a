"""One process of a multi-process test run that the CLI cannot express: ``train()`` stopped by SIGTERM
after a given step (as ``timeout``, SLURM or Kubernetes stop a job), on every rank.

Launched by ``torchrun``: ``fsdp_worker.py STAGE INIT OUT STOP_AT KEY=VALUE ...`` (keys of
TrainConfig, on the debug preset).
"""

import os
import signal
import sys

from trimode.training import apply_overrides, train
from trimode.training.config import preset_config


def main(stage: str, init: str, out: str, stop_at: str, *overrides: str) -> None:
    cfg = apply_overrides(preset_config("debug", stage), ["progress=false", *overrides]).validate()

    def stop(step, record):
        if step == int(stop_at):
            os.kill(os.getpid(), signal.SIGTERM)

    train(cfg, out=out, init=init, on_step=stop)


if __name__ == "__main__":
    main(*sys.argv[1:])
