"""Draw docs/image_tasks.png: eight generated image tasks (two of each kind) with their reference answers.

    python scripts/image_tasks_sheet.py [OUT.png]
"""

import sys
from pathlib import Path

from trimode.image_tasks import HELDOUT_SEED, contact_sheet, make_tasks

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else ROOT / "docs" / "image_tasks.png"
    tasks = make_tasks(8, seed=HELDOUT_SEED)  # held-out examples: what the model is judged on
    print(contact_sheet(tasks, out))


if __name__ == "__main__":
    main(sys.argv[1:])
