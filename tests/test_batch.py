"""mmsent/data/batch.py: what a Batch carries through select and map, and how a Split cuts batches."""
import torch


def test_batch_select_and_map_carry_every_field():
    from mmsent.data.batch import Batch, Split

    x = {"a": torch.arange(12.0).reshape(4, 3, 1), "b": torch.arange(8.0).reshape(4, 2)}
    mask = {"a": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]).bool(), "b": torch.ones(4, 1).bool()}
    split = Split(x, mask, torch.tensor([0.5, -1.0, 2.0, 3.0]), ["p", "q", "r", "s"])
    b = split.batch(torch.tensor([2, 0, 3]))
    assert b.ids == ["r", "p", "s"] and b.index.tolist() == [2, 0, 3] and b.y.tolist() == [2.0, 0.5, 3.0]
    assert b.x["a"][:, :, 0].tolist() == [[6, 7, 8], [0, 1, 2], [9, 10, 11]] and b.mask["a"][2].tolist() == [0, 0, 0]
    s = b.select(torch.tensor([1]))  # positions within the batch; the split positions follow them
    assert s.ids == ["p"] and s.index.tolist() == [0] and s.x["b"].tolist() == [[0.0, 1.0]]
    m = b.map(lambda t: t[:, :1] if t.dim() > 1 else t * 2)
    assert m.y.tolist() == [4.0, 1.0, 6.0] and m.x["a"].shape == (3, 1, 1) and m.mask["a"].shape == (3, 1)
    assert m.ids == b.ids and m.index is b.index
    assert Batch(x, mask, split.y, split.ids).select(torch.tensor([1])).index is None


def test_batches_merge_a_short_last_batch_only_when_asked():
    from mmsent.data.batch import Split

    s = Split({"a": torch.arange(9.0)[:, None, None]}, {"a": torch.ones(9, 1, dtype=torch.bool)}, torch.zeros(9), list("abcdefghi"))
    sizes = lambda **kw: [len(b) for b in s.batches(4, **kw)]  # noqa: E731
    assert sizes() == [4, 4, 1] and s.n_batches(4) == 3
    assert sizes(min_size=2) == [4, 5] and s.n_batches(4, 2) == 2
    assert sizes(min_size=2, shuffle=True, generator=torch.Generator().manual_seed(0)) == [4, 5]
    assert sorted(torch.cat([b.x["a"].flatten() for b in s.batches(4, min_size=2, shuffle=True)]).tolist()) == list(range(9))
    assert [len(b) for b in s.batches(3, min_size=2)] == [3, 3, 3]  # nothing short: nothing merged
    one = Split({"a": torch.zeros(1, 1, 1)}, {"a": torch.ones(1, 1, dtype=torch.bool)}, torch.zeros(1), ["a"])
    assert [len(b) for b in one.batches(4, min_size=2)] == [1]  # a single batch has nothing to join
