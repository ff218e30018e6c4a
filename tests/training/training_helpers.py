"""Builders shared by the training tests."""

from trimode.training import preset_config


def debug_config(stage: str, **overrides):
    """The debug preset, quiet, with ``overrides`` applied (keys of TrainConfig)."""
    cfg = preset_config("debug", stage)
    cfg.progress = False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
