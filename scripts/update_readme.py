"""Rewrite README's strategy table from the registry (``mmsent.strategies.strategy_table``): a
strategy's row lives on its class (``method``, ``summary``, ``checked``), never in README by hand.
Usage: python scripts/update_readme.py   (tests/test_registries.py fails while README differs)."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsent.plugins import load_plugins  # noqa: E402
from mmsent.strategies import strategy_table  # noqa: E402

HEADER = "| name | method | what it does, N modalities | checked against the reference at N = 2 |"


def render(readme: str) -> str:
    """README with its strategy table (the header line and the rows under it) replaced."""
    pattern = re.compile(re.escape(HEADER) + r"\n(?:\|.*\|\n)+")
    if not pattern.search(readme):
        raise SystemExit("README.md has no strategy table to replace (its header line is missing)")
    return pattern.sub(lambda _: strategy_table(), readme, count=1)


if __name__ == "__main__":
    load_plugins()  # a fork's own strategies ($MMSENT_PLUGINS, entry points) get their rows too
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"wrote the strategy table into {path}")
