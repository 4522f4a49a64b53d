"""``python -m mmsent ...``: the command line (what ``cli.py table`` starts each training run with)."""
import sys

from mmsent.cli import main

sys.exit(main())
