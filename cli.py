"""``python cli.py ...`` in a checkout: the same command line as ``mmsent`` (``mmsent/cli.py``)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # this checkout's mmsent, installed or not

# The data beside a checkout (../shared), found without --data: `python cli.py train --dataset mosi`.
# The package itself carries no path of this repository's surroundings.
for var, rel in (("MMSENT_MOSI", "../shared/data/mosi/mosi_utterance.pkl"), ("MMSENT_AVDIGITS", "../shared/data/avdigits")):
    if (ROOT / rel).exists():
        os.environ.setdefault(var, str((ROOT / rel).resolve()))

from mmsent.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
