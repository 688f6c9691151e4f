"""Fixed-shape packed batches from the (seed, step) stream: coverage, resume, hosts, packing."""
import collections

import numpy as np
import pytest

from lima_jax.data.batches import Batcher, eval_batches, pack_rows
from lima_jax.errors import LimaError

SEQ = 32


def make_examples(n=37, seed=0):
    """Example i: ids that encode (i, position), so every token says where it came from."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(2, 3 * SEQ // 2))  # a few longer than a row: cut to fit
        ids = (1000 * (i + 1) + np.arange(length)).astype(np.int32)
        mask = (rng.random(length) < 0.6).astype(np.int32)
        mask[0] = 0
        examples.append((ids, mask))
    return examples


EXAMPLES = make_examples()
LENGTHS = [len(ids) for ids, _ in EXAMPLES]


def batcher(fetched=None, **kw):
    def fetch(i):
        if fetched is not None:
            fetched.append(i)
        return EXAMPLES[i]

    args = dict(batch_size=8, seq_len=SEQ, num_epochs=3, seed=0)
    args.update(kw)
    return Batcher(LENGTHS, fetch, **args)


def unpack(batch):
    """(example index, inputs, targets, weights, positions) of every segment in the batch."""
    out = []
    for r in range(batch.tokens.shape[0]):
        for seg in np.unique(batch.segment_ids[r]):
            if seg == 0:
                continue
            at = batch.segment_ids[r] == seg
            assert np.all(np.diff(np.flatnonzero(at)) == 1)  # a segment is contiguous
            toks = batch.tokens[r, at]
            out.append((int(toks[0]) // 1000 - 1, toks, batch.targets[r, at], batch.weights[r, at], batch.positions[r, at]))
    return out


def test_steps_take_batch_size_examples_and_cover_each_epoch():
    fetched = []
    b = batcher(fetched)
    assert b.total_steps == 3 * 37 // 8 == 13
    counts = collections.Counter()
    for step in range(b.total_steps):
        before = len(fetched)
        batch = b.batch(step)
        assert len(fetched) - before == 8 and batch.num_examples == 8
        counts.update(fetched[before:])
    assert sum(counts.values()) == 13 * 8  # the last 3*37 - 104 = 7 stream positions are cut
    # Every example is seen once per whole epoch: the first two epochs are complete, in full.
    stream = np.concatenate([b.example_ids(s) for s in range(b.total_steps)])
    for e in range(2):
        assert sorted(stream[e * 37 : (e + 1) * 37].tolist()) == list(range(37))
    assert b.epoch_end_steps() == [5, 10, 13]  # ceil(37/8), ceil(74/8), then the end of the run
    assert (b.epoch_of(5), b.epoch_of(4), b.epoch_progress(4)) == (1, 0, 32 / 37)


def test_stream_over_num_epochs_covers_each_example_num_epochs_times():
    b = batcher(batch_size=37, num_epochs=4)  # B == N: epochs align with steps
    stream = np.concatenate([b.example_ids(s) for s in range(b.total_steps)])
    assert b.total_steps == 4
    assert collections.Counter(stream.tolist()) == {i: 4 for i in range(37)}
    b = batcher(batch_size=10, num_epochs=10)  # 370 positions, 37 steps, boundaries inside steps
    stream = np.concatenate([b.example_ids(s) for s in range(b.total_steps)])
    assert b.total_steps == 37 and collections.Counter(stream.tolist()) == {i: 10 for i in range(37)}
    assert b.epoch_end_steps() == [4, 8, 12, 15, 19, 23, 26, 30, 34, 37]
    # Each epoch is a different permutation.
    assert stream[:37].tolist() != stream[37:74].tolist()


def assert_batches_equal(x, y):
    for k in ("tokens", "targets", "weights", "positions", "segment_ids"):
        np.testing.assert_array_equal(getattr(x, k), getattr(y, k))
    assert (x.padding_fraction, x.num_examples) == (y.padding_fraction, y.num_examples)


def test_deterministic_from_seed_and_resumable():
    run = [batcher().batch(s) for s in range(13)]
    again = batcher()
    for s in range(13):
        assert_batches_equal(run[s], again.batch(s))
    resumed = batcher()  # a fresh process resuming at step 7
    for s in range(7, 13):
        assert_batches_equal(run[s], resumed.batch(s))
    other = batcher(seed=1)
    assert not np.array_equal(other.batch(0).tokens, run[0].tokens)


@pytest.mark.parametrize("pack", [True, False])
def test_two_hosts_split_a_step(pack):
    one = batcher(pack=pack)
    hosts = [batcher(pack=pack, process_index=h, process_count=2) for h in range(2)]
    assert hosts[0].rows_per_host == hosts[1].rows_per_host  # the same shape on every host
    for step in range(one.total_steps):
        shares = [h.example_ids(step) for h in hosts]
        assert shares[0].size == shares[1].size == 4
        assert not set(shares[0]) & set(shares[1])
        assert np.concatenate(shares).tolist() == one.example_ids(step).tolist()
        got = sorted(e for h in hosts for e, *_ in unpack(h.batch(step)))
        assert got == sorted(e for e, *_ in unpack(one.batch(step)))
    fetched = []
    batcher(fetched, process_index=1, process_count=2).batch(3)
    assert fetched == hosts[1].example_ids(3).tolist()  # a host tokenizes only its share
    with pytest.raises(LimaError, match="batch_size 8 is not divisible by the process count 3"):
        batcher(process_count=3)


@pytest.mark.parametrize("pack", [True, False])
def test_rows_hold_whole_examples_with_their_own_positions_and_targets(pack):
    b = batcher(pack=pack)
    shapes = set()
    for step in range(b.total_steps):
        batch = b.batch(step)
        shapes.add(batch.tokens.shape)
        assert batch.tokens.dtype == batch.targets.dtype == batch.positions.dtype == batch.segment_ids.dtype == np.int32
        assert batch.weights.dtype == np.float32
        segments = unpack(batch)
        assert sorted(e for e, *_ in segments) == sorted(b.example_ids(step).tolist())
        for e, toks, targets, weights, positions in segments:
            ids, mask = EXAMPLES[e]
            n = min(len(ids), SEQ + 1) - 1
            np.testing.assert_array_equal(toks, ids[:n])
            np.testing.assert_array_equal(targets, ids[1 : n + 1])  # the next token of the same example
            np.testing.assert_array_equal(weights, mask[1 : n + 1])
            np.testing.assert_array_equal(positions, np.arange(n))
        pad = batch.segment_ids == 0
        assert not batch.weights[pad].any() and not batch.tokens[pad].any()
        assert batch.padding_fraction == pytest.approx(pad.mean())
        expected_used = sum(min(LENGTHS[e], SEQ + 1) - 1 for e in b.example_ids(step))
        assert batch.padding_fraction == pytest.approx(1 - expected_used / (b.rows_per_host * SEQ))
        if not pack:
            assert (batch.segment_ids <= 1).all()
    assert shapes == {(b.rows_per_host, SEQ)}  # fixed across all steps
    if not pack:
        assert b.rows_per_host == 8


def test_packing_uses_fewer_rows_and_row_multiple():
    short = [(ids[: SEQ // 3], mask[: SEQ // 3]) for ids, mask in EXAMPLES]  # about 3 to a row

    def make(**kw):
        return Batcher([len(ids) for ids, _ in short], short.__getitem__, batch_size=8, seq_len=SEQ, num_epochs=3, seed=0, **kw)

    packed, unpacked = make(), make(pack=False)
    assert packed.rows_per_host < unpacked.rows_per_host == 8
    fractions = [(packed.batch(s).padding_fraction, unpacked.batch(s).padding_fraction) for s in range(13)]
    assert all(p < u for p, u in fractions)
    rounded = make(row_multiple=4)
    assert rounded.rows_per_host % 4 == 0 and packed.rows_per_host <= rounded.rows_per_host < packed.rows_per_host + 4
    assert rounded.batch(2).tokens.shape == (rounded.rows_per_host, SEQ)
    np.testing.assert_array_equal(rounded.batch(2).tokens[: packed.rows_per_host], packed.batch(2).tokens)


def test_first_fit_decreasing():
    assert pack_rows([5, 9, 3, 4, 0, 7], 10) == [[1], [5, 2], [0, 3]]
    assert pack_rows([10, 10], 10) == [[0], [1]]


def test_padding_fraction_by_hand():
    examples = [(np.arange(1, 6, dtype=np.int32), np.array([0, 0, 1, 1, 1], np.int32)), (np.arange(1, 4, dtype=np.int32), np.ones(3, np.int32))]
    b = Batcher([5, 3], lambda i: examples[i], batch_size=2, seq_len=8, num_epochs=1, seed=0)
    batch = b.batch(0)
    assert batch.tokens.shape == (1, 8)
    assert batch.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 0, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 0, 1, 0, 0]]
    assert batch.tokens.tolist() == [[1, 2, 3, 4, 1, 2, 0, 0]]
    assert batch.targets.tolist() == [[2, 3, 4, 5, 2, 3, 0, 0]]
    assert batch.weights.tolist() == [[0, 1, 1, 1, 1, 1, 0, 0]]
    assert batch.padding_fraction == 2 / 8


def test_eval_batches_in_order_with_padded_last_batch():
    batches = eval_batches(EXAMPLES, SEQ, rows=3)
    assert all(b.tokens.shape == (3, SEQ) for b in batches)
    order = [e for b in batches for e, *_ in sorted(unpack(b), key=lambda s: s[0])]
    assert order == list(range(37))  # every example once, in order
    assert sum(b.num_examples for b in batches) == 37
    assert batches[-1].padding_fraction > 0
    assert eval_batches([], SEQ, rows=3) == []


def test_bad_arguments():
    with pytest.raises(LimaError, match="no training examples"):
        Batcher([], lambda i: None, batch_size=2, seq_len=8, num_epochs=1, seed=0)
    with pytest.raises(LimaError, match="seq_len must be positive"):
        batcher(seq_len=0)
    with pytest.raises(ValueError, match="outside the run"):
        batcher().batch(13)


def test_a_batch_larger_than_the_data_is_refused_with_the_remedy():
    """8 examples at batch 64 used to give one step of 8 passes for any num_epochs."""
    with pytest.raises(LimaError) as e:
        Batcher([5] * 8, lambda i: None, batch_size=64, seq_len=8, num_epochs=15, seed=0)
    assert str(e.value) == ("config key batch_size: 64 is more than the 8 training examples; "
                            "set --config.batch_size=8 or less, or give more data")
    b = Batcher([5] * 8, lambda i: ([1] * 5, [1] * 5), batch_size=8, seq_len=8, num_epochs=15, seed=0)
    assert b.total_steps == 15 and b.epoch_end_steps() == list(range(1, 16))
