"""mmsent/data/synthetic.py: any N, with the planted imbalance the studies rely on."""
import pytest
import torch

from mmsent.data import make_synthetic


@pytest.mark.parametrize("n", [2, 3, 5])
def test_synthetic_any_n_with_planted_imbalance(n):
    ds = make_synthetic(n_modalities=n, n_train=2000, n_val=10, n_test=10)
    assert len(ds.modalities) == n
    r2 = {}
    for m in ds.modalities:  # least-squares fit of y from one modality
        X = torch.cat([ds.train.x[m][:, 0], torch.ones(2000, 1)], 1).double()
        y = ds.train.y.double()
        sol = torch.linalg.lstsq(X, y[:, None]).solution
        r2[m] = 1 - ((X @ sol)[:, 0] - y).var() / y.var()
    first, *rest = ds.modalities
    assert all(r2[first] > r2[m] + 0.3 for m in rest)  # the first modality dominates
    assert all(r2[m] > 0.02 for m in rest)  # but the weak ones carry signal
    cls = make_synthetic(n_modalities=n, task="classification", num_classes=4, n_train=400)
    assert set(cls.train.y.tolist()) == {0, 1, 2, 3}
