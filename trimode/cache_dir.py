"""Where trimode keeps what it builds for the user: assembled models, measured forward costs.

``$TRIMODE_CACHE`` if set, else ``$XDG_CACHE_HOME/trimode``, else ``~/.cache/trimode``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("TRIMODE_CACHE"):
        return Path(os.environ["TRIMODE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trimode"
