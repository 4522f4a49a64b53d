"""mmsent/plots.py: `cli.py plot` end to end, from run folders to figures."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from test_table import TINY  # noqa: E402


def test_plot_writes_figures(tmp_path):
    for name, strat in (("dgl", ["--strategy", "dgl"]), ("uni", ["--strategy", "unimodal", "strategy.modality=audio"])):
        assert cli.main(["train", "--quiet", "--out", str(tmp_path / name), *strat, *TINY]) == 0
    assert cli.main(["plot", str(tmp_path / "dgl"), str(tmp_path / "uni"), "--out", str(tmp_path / "fig")]) == 0
    for f in ("grad_norms.png", "branch_accuracy.png", "masked_passes.png"):
        assert (tmp_path / "fig" / f).stat().st_size > 5000
    assert cli.main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "fig2")]) == 2
