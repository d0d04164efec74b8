"""The README's demo (placeholder until the population demo lands): two particles mixed."""

import runpy
from pathlib import Path


def main() -> None:
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"))


if __name__ == "__main__":
    main()
