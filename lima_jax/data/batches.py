"""Tokenized examples -> fixed-shape, packed training batches, as a pure function of (seed, step).

The example order is one stream: epoch e is a permutation drawn from `np.random.default_rng((seed,
e))`, and step s takes stream positions [s*B, (s+1)*B), so no example is dropped at an epoch boundary
and a run resumed at step s sees exactly the batches it would have seen: nothing is carried between
steps. Each host packs its contiguous share of a step, first-fit decreasing, into `rows_per_host` rows
of `seq_len` tokens, a count computed once for the whole run so the train step compiles once. An
example of n tokens holds inputs ids[:-1], targets ids[1:], weights mask[1:] and positions 0..n-2, with
`segment_ids` 1, 2, ... per example (0 = padding) so attention and the loss never cross examples."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from lima_jax.errors import LimaError

Example = tuple[np.ndarray, np.ndarray]  # (token ids, 0/1 loss mask), same length

# The batch the train and eval steps take: every field (rows, seq_len), with these dtypes. The one
# definition that the batcher, the jitted steps' shardings, AOT and the bench all read.
BATCH_SCHEMA: dict[str, type] = {
    "tokens": np.int32,
    "targets": np.int32,
    "weights": np.float32,
    "positions": np.int32,
    "segment_ids": np.int32,
}


@dataclasses.dataclass(frozen=True)
class Batch:
    """(rows, seq_len) arrays, typed as BATCH_SCHEMA says."""

    tokens: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    padding_fraction: float  # share of the token slots that hold no example
    num_examples: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays alone, e.g. for `jax.device_put`."""
        return {k: getattr(self, k) for k in BATCH_SCHEMA}


def span(length: int, seq_len: int) -> int:
    """Token slots an example of `length` ids fills: its inputs ids[:-1], cut to one row."""
    return max(0, min(int(length), seq_len + 1) - 1)


def pack_rows(spans: Sequence[int], seq_len: int) -> list[list[int]]:
    """First-fit decreasing: the item indices in each row. Empty items (span 0) get no row.

    Ties are broken by index, so the packing is deterministic.
    """
    order = sorted((i for i, s in enumerate(spans) if s > 0), key=lambda i: (-spans[i], i))
    room = np.empty(len(order), np.int64)  # free slots per row; at most one row per item
    rows: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room[: len(rows)] >= spans[i])
        if fits.size:
            j = int(fits[0])
        else:
            j = len(rows)
            rows.append([])
            room[j] = seq_len
        rows[j].append(i)
        room[j] -= spans[i]
    return rows


def fill_batch(examples: Sequence[Example], rows: list[list[int]], num_rows: int, seq_len: int) -> Batch:
    """Lays out `examples` as `rows` (lists of indices into `examples`) in a (num_rows, seq_len) batch."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit in a batch of {num_rows}")
    tokens, targets, weights, positions, segment_ids = (np.zeros((num_rows, seq_len), d) for d in BATCH_SCHEMA.values())
    for r, items in enumerate(rows):
        offset, seg = 0, 0
        for i in items:
            ids, mask = examples[i]
            n = span(len(ids), seq_len)
            if n == 0:
                continue  # a lone BOS has no target: nothing to lay out
            seg += 1
            if offset + n > seq_len:
                raise ValueError(f"row {r} overflows: {offset} + {n} > {seq_len}")
            cols = slice(offset, offset + n)
            tokens[r, cols] = ids[:n]
            targets[r, cols] = ids[1 : n + 1]
            weights[r, cols] = mask[1 : n + 1]
            positions[r, cols] = np.arange(n)
            segment_ids[r, cols] = seg
            offset += n
    used = int(np.count_nonzero(segment_ids))
    return Batch(tokens, targets, weights, positions, segment_ids, 1.0 - used / (num_rows * seq_len), len(examples))


class Batcher:
    """Training batches for one host: `batch(step)` for step in [0, total_steps).

    `lengths[i]` is the token count of example i (after the tokenizer's trimming) and `fetch(i)`
    its (ids, loss_mask); only this host's examples of a step are fetched. Examples longer than
    seq_len + 1 tokens are cut to fit one row.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        fetch: Callable[[int], Example],
        *,
        batch_size: int,
        seq_len: int,
        num_epochs: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        pack: bool = True,
        row_multiple: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths, np.int64).reshape(-1)
        self.num_examples = len(self.lengths)
        if self.num_examples == 0:
            raise LimaError("no training examples")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("num_epochs", num_epochs), ("row_multiple", row_multiple), ("process_count", process_count)):
            if value < 1:
                raise LimaError(f"{name} must be positive, got {value}")
        if batch_size % process_count:
            raise LimaError(f"batch_size {batch_size} is not divisible by the process count {process_count}")
        if batch_size > self.num_examples:  # an epoch would be less than one step: num_epochs would mean nothing
            raise LimaError(
                f"config key batch_size: {batch_size} is more than the {self.num_examples} training examples; "
                f"set --config.batch_size={self.num_examples} or less, or give more data"
            )
        if not 0 <= process_index < process_count:
            raise LimaError(f"process_index {process_index} is not in [0, {process_count})")
        self.fetch = fetch
        self.batch_size, self.seq_len, self.num_epochs, self.seed = batch_size, seq_len, num_epochs, seed
        self.process_index, self.process_count = process_index, process_count
        self.per_host = batch_size // process_count
        self.pack = pack
        self._perms: dict[int, np.ndarray] = {}
        self.total_steps = max(1, num_epochs * self.num_examples // batch_size)
        needed = self._max_rows() if pack else self.per_host
        self.rows_per_host = -(-needed // row_multiple) * row_multiple

    # --- the stream -------------------------------------------------------------------------

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:  # kept: every step of the epoch reads it
            self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
        return self._perms[epoch]

    def _stream(self, start: int, stop: int) -> np.ndarray:
        """Example ids at stream positions [start, stop)."""
        pos = np.arange(start, stop)
        epochs, offsets = pos // self.num_examples, pos % self.num_examples
        out = np.empty(len(pos), np.int64)
        for e in np.unique(epochs):
            at = epochs == e
            out[at] = self._permutation(int(e))[offsets[at]]
        return out

    def example_ids(self, step: int, process_index: int | None = None) -> np.ndarray:
        """The examples a host trains on at `step` (this host's by default), in stream order."""
        h = self.process_index if process_index is None else process_index
        start = step * self.batch_size + h * self.per_host
        return self._stream(start, start + self.per_host)

    def epoch_of(self, step: int) -> int:
        """Whole epochs done after `step` steps."""
        return step * self.batch_size // self.num_examples

    def epoch_progress(self, step: int) -> float:
        """Epochs done after `step` steps, as a fraction (e.g. 2.5)."""
        return step * self.batch_size / self.num_examples

    def epoch_end_steps(self) -> list[int]:
        """Step counts (steps done) at which epoch 1, 2, ... is complete: where to save per-epoch
        checkpoints. The last is total_steps, which may stop up to B-1 examples short of the end."""
        ends = {min(math.ceil(e * self.num_examples / self.batch_size), self.total_steps) for e in range(1, self.num_epochs + 1)}
        return sorted(ends)

    # --- batches ----------------------------------------------------------------------------

    def _rows_for(self, spans: Sequence[int]) -> list[list[int]]:
        return pack_rows(spans, self.seq_len) if self.pack else [[i] for i in range(len(spans))]

    def _max_rows(self) -> int:
        """Rows the fullest host needs at any step of the run: the fixed batch shape."""
        spans = np.minimum(self.lengths, self.seq_len + 1) - 1
        most = 1
        for step in range(self.total_steps):
            ids = self._stream(step * self.batch_size, (step + 1) * self.batch_size)
            for h in range(self.process_count):
                share = spans[ids[h * self.per_host : (h + 1) * self.per_host]]
                most = max(most, len(pack_rows(share.tolist(), self.seq_len)))
        return most

    def batch(self, step: int) -> Batch:
        """This host's batch at `step`: rows_per_host rows of seq_len tokens."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the run's [0, {self.total_steps}) steps")
        examples = []
        for i in self.example_ids(step).tolist():
            ids, mask = (np.asarray(a).reshape(-1) for a in self.fetch(i))
            if len(ids) != self.lengths[i] or len(mask) != len(ids):
                raise ValueError(f"example {i}: fetch gave {len(ids)} ids and {len(mask)} mask values, the lengths table {self.lengths[i]}")
            examples.append((ids, mask))
        rows = self._rows_for([span(len(ids), self.seq_len) for ids, _ in examples])
        return fill_batch(examples, rows, self.rows_per_host, self.seq_len)


def eval_batches(examples: Sequence[Example], seq_len: int, rows: int) -> list[Batch]:
    """Every example once, in order, packed (next fit) into batches of `rows` x `seq_len`; the last
    batch is padded. For the dev set, whose loss picks the checkpoint."""
    if seq_len < 1 or rows < 1:
        raise LimaError(f"seq_len and rows must be positive, got {seq_len} and {rows}")
    batches: list[Batch] = []
    chunk: list[Example] = []  # the examples of the batch being filled
    plan: list[list[int]] = [[]]
    room = seq_len
    for ex in examples:
        ex = (np.asarray(ex[0]).reshape(-1), np.asarray(ex[1]).reshape(-1))
        n = span(len(ex[0]), seq_len)
        if n > room:  # next row, or the next batch when this one is full
            if len(plan) == rows:
                batches.append(fill_batch(chunk, plan, rows, seq_len))
                chunk, plan = [], [[]]
            else:
                plan.append([])
            room = seq_len
        plan[-1].append(len(chunk))
        chunk.append(ex)
        room -= n
    if chunk:
        batches.append(fill_batch(chunk, plan, rows, seq_len))
    return batches
