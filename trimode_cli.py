"""The ``trimode`` console script: runs :func:`trimode.cli.main` with a fast start.

``import trimode`` registers trimode's classes with transformers, which imports torch
and transformers (seconds). A command line needs that only once a command loads a
model, so this entry point asks the package to defer it while it is imported: ``trimode
--help`` and argument errors then answer without importing torch. The variable is
removed again right after the import, so child processes do not inherit it.
"""

from __future__ import annotations

import os
import sys

_FLAG = "TRIMODE_DEFER_AUTO_REGISTRATION"  # trimode.DEFER_REGISTRATION_ENV


def main() -> int:
    previous = os.environ.get(_FLAG)
    os.environ[_FLAG] = "1"
    try:
        from trimode.cli import main as cli_main
    finally:
        if previous is None:
            del os.environ[_FLAG]
        else:
            os.environ[_FLAG] = previous
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
