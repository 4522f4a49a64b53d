"""``python cli.py ...`` in a checkout: the same command line as ``mmsent`` (``mmsent/cli.py``)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # this checkout's mmsent, installed or not

from mmsent.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
