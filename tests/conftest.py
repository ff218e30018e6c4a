import atexit
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite runs the commands on trimode-tiny (seconds), also where trimode-smol's base is installed
# and would be the default; tests of the default itself unset this.
from trimode.loading import SHIPPED_MODEL  # noqa: E402

os.environ.setdefault("TRIMODE_MODEL", str(SHIPPED_MODEL))
# Assembled models and persisted forward costs go to a cache of the test session's own, never the
# user's (a curve measured under a busy test run must not decide their block lengths).
if "TRIMODE_CACHE" not in os.environ:
    os.environ["TRIMODE_CACHE"] = tempfile.mkdtemp(prefix="trimode-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TRIMODE_CACHE"], ignore_errors=True)
torch.set_num_threads(min(2, os.cpu_count() or 1))
