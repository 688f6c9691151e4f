"""Compiled generation: one prefill, then a `lax.while_loop` of single-token decode steps.

LIMA's sampling (nucleus p 0.9, temperature 0.7, a CTRL-style repetition penalty of 1.2 on the tokens
already generated); temperature 0 is plain greedy decoding. Prompts are left-padded to a bucketed
length, so new prompt lengths reuse a compiled program; each row stops on its own at EOT or EOS.
`generate` runs the whole loop in one call; `SteppedBatch` runs it a chunk of steps per call, with
per-row knobs and budgets, for the server.

A row's randomness comes from the seed and its prompt's token ids alone (`prompt_seed`), never from its
place in a file or a batch, so reordering, filtering or resuming a prompt set leaves every answer as it
was. Over a mesh (of one process or several) the KV cache follows the training rules, and every process
reads the whole answer."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lima_jax.errors import LimaError
from lima_jax.inference.hosts import check_same
from lima_jax.inference.sampling_params import SamplingParams
from lima_jax.model import KVCache, Llama
from lima_jax.sharding import activation_mesh

MIN_BUCKET = 16
KNOBS = ("temperature", "top_p", "repetition_penalty")  # the sampling settings each row carries into the loop
# XLA:CPU's default copy insertion copies every layer's KV cache on each decode step (it cannot tell
# that writing a token into the cache is the buffer's last use); its region analysis can, and the
# cache is then updated in place. A debug option of every backend; only XLA:CPU reads it.
COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def bucket(n: int) -> int:
    """The next power of two, at least MIN_BUCKET: prompt lengths that share a compiled program."""
    return max(MIN_BUCKET, 1 << max(0, n - 1).bit_length())


def repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float | jax.Array) -> jax.Array:
    """CTRL's penalty on tokens already generated: logits (B, V), seen (B, V) bool."""
    penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalized, logits)


def nucleus(logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability reaches top_p (the top one
    always); the rest get -inf. logits (B, V), already divided by the temperature.

    Token i is kept when the tokens strictly more likely than it hold less than top_p. That mass
    only falls as the logit rises, so the kept set is every logit >= the smallest value x with
    mass(logits > x) < top_p, found by bisection over the 2^32 float32 values: 32 masked sums per
    row instead of sorting the vocabulary (a sort of 32,000 logits costs several milliseconds per
    row on a CPU, more than the model's step)."""
    probs = jax.nn.softmax(logits, axis=-1)
    top_p = jnp.reshape(jnp.asarray(top_p, jnp.float32), (-1,))  # a scalar or one per row

    def reaches(x):  # (B,) float32 -> (B,) bool: is x at or above the threshold?
        return jnp.sum(jnp.where(logits > x[:, None], probs, 0.0), axis=-1) < top_p

    def halve(_, bounds):
        lo, hi = bounds  # ordered ints with reaches(lo) false and reaches(hi) true
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # their mean, without overflowing int32
        ok = reaches(_from_ordered(mid))
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    hi = _to_ordered(jnp.max(logits, axis=-1))  # nothing is above the maximum: reaches() holds there
    # Just below -inf, so that every midpoint is a real float.
    lo = jnp.full_like(hi, _to_ordered(jnp.float32(-jnp.inf)) - 1)
    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    # top_p 1 keeps everything: in float32 the mass of the least likely tokens can vanish in the sum.
    keep = (logits >= _from_ordered(hi)[:, None]) | (top_p >= 1.0)[:, None]
    return jnp.where(keep, logits, -jnp.inf)


_SIGN_MASK = 0x7FFFFFFF


def _to_ordered(x: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order (negative floats have their magnitude bits flipped)."""
    i = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(i < 0, i ^ _SIGN_MASK, i)


def _from_ordered(i: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(i < 0, i ^ _SIGN_MASK, i), jnp.float32)


def first_argmax(x: jax.Array) -> jax.Array:
    """`argmax` over the last axis (the first index of the maximum), as a max and a min: XLA on a
    CPU runs argmax's paired-value reduction several times slower, and it runs once per token."""
    best = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == best, index, x.shape[-1]), axis=-1)


def next_token(keys: jax.Array, logits: jax.Array, seen: jax.Array, params: dict[str, jax.Array],
               greedy: bool | jax.Array) -> jax.Array:
    """One token per row; `keys` (B,) are the rows' own keys, so a row's draw does not depend on
    which other prompts share its batch. The knobs are scalars or one value per row (B,); with
    `greedy` False, a row whose temperature is 0 still takes the argmax (a server's batch mixes them).
    `greedy` as a traced bool picks the path at run time: one program serves both kinds of batch."""
    if isinstance(greedy, jax.Array):
        return jax.lax.cond(greedy, lambda: first_argmax(logits), lambda: next_token(keys, logits, seen, params, False))
    if greedy:
        return first_argmax(logits)
    temperature = jnp.reshape(params["temperature"], (-1, 1))
    scaled = repetition_penalty(logits, seen, jnp.reshape(params["repetition_penalty"], (-1, 1)))
    scaled = nucleus(scaled / jnp.where(temperature == 0, 1.0, temperature), params["top_p"])
    # Gumbel-max, exactly as jax.random.categorical draws, with the faster argmax.
    noise = jax.vmap(lambda k: jax.random.gumbel(k, scaled.shape[1:], scaled.dtype))(keys)
    return jnp.where(temperature[:, 0] == 0, first_argmax(logits), first_argmax(scaled + noise))


class DecodeState(NamedTuple):
    """A batch partway through generation, on the device: what the decode loop carries."""

    step: jax.Array  # () tokens generated so far (the same for every row)
    out: jax.Array  # (B, N) the tokens generated; a stopped row repeats its stop token
    cache: KVCache
    logits: jax.Array  # (B, V) the next token's logits
    done: jax.Array  # (B,) bool
    seen: jax.Array  # (B, V) bool: the tokens each row has generated (for the repetition penalty)
    keys: jax.Array  # (B,) each row's key
    # With log-probabilities asked for (else zero-sized): the model's own log-softmax (before the
    # penalty, temperature and nucleus) of each token generated, and the K most likely at that step.
    logprobs: jax.Array  # (B, N) float32
    top_ids: jax.Array  # (B, N, K) int32
    top_logprobs: jax.Array  # (B, N, K) float32


# Prompt tokens per prefill pass: one layer's attention scores (batch x heads x chunk x slots) and MLP
# activations grow with the chunk, not with the prompt width (16 prompts of 8,192 tokens in one pass
# would need about 48 GB of scores alone).
PREFILL_CHUNK = 512


def _prefill(model, tokens, positions, segments, stop_ids, keys, max_new_tokens, top_k: int | None = None) -> DecodeState:
    b, p = tokens.shape
    cache = KVCache.zeros(model.cfg, b, p + max_new_tokens)
    first = p % PREFILL_CHUNK or min(p, PREFILL_CHUNK)  # the odd part first: the rest is whole chunks
    logits, cache = model.decode(tokens[:, :first], positions[:, :first], segments[:, :first], cache, last_only=True)
    if p > first:  # each chunk attends to the cache written before it, as one pass over the prompt would
        chunked = lambda a: a[:, first:].reshape(b, -1, PREFILL_CHUNK).swapaxes(0, 1)

        def one_chunk(cache, chunk):
            logits, cache = model.decode(*chunk, cache, last_only=True)
            return cache, logits

        cache, logits = jax.lax.scan(one_chunk, cache, (chunked(tokens), chunked(positions), chunked(segments)))
        logits = logits[-1]
    n, k = (0, 0) if top_k is None else (max_new_tokens, top_k)
    return DecodeState(jnp.zeros((), jnp.int32), jnp.full((b, max_new_tokens), stop_ids[0], jnp.int32), cache,
                       logits[:, -1], jnp.zeros((b,), jnp.bool_), jnp.zeros((b, logits.shape[-1]), jnp.bool_), keys,
                       jnp.zeros((b, n), jnp.float32), jnp.zeros((b, n, k), jnp.int32), jnp.zeros((b, n, k), jnp.float32))


def _advance(model, s: DecodeState, lengths, stop_ids, knobs, limits, until, greedy, record=True) -> DecodeState:
    """Decodes until step `until` (at most N) or until every row is done; a row is done at a stop
    token or once it has `limits` tokens. `greedy` and `record` (whether to fill the log-probability
    arrays, where the state has them) may be traced bools, decided at run time."""
    b, vocab = s.logits.shape
    until = jnp.minimum(until, s.out.shape[1])

    def body(s: DecodeState) -> DecodeState:
        token = next_token(jax.vmap(jax.random.fold_in, (0, None))(s.keys, s.step), s.logits, s.seen, knobs, greedy)
        token = jnp.where(s.done, stop_ids[0], token)  # a stopped row repeats its stop token
        done = s.done | jnp.isin(token, stop_ids) | (s.step + 1 >= limits)
        step_logits, cache = model.decode(token[:, None], (lengths + s.step)[:, None], jnp.ones((b, 1), jnp.int32), s.cache)
        logprobs, top_ids, top_logprobs = s.logprobs, s.top_ids, s.top_logprobs
        if logprobs.shape[1]:  # static: a program built without top_logprobs has no room for them
            k = top_ids.shape[2]

            def found():  # this step's: the token's log-probability, the K most likely and theirs
                logp = jax.nn.log_softmax(s.logits.astype(jnp.float32), axis=-1)
                values, ids = jax.lax.top_k(logp, k) if k else (jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32))
                return jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0], ids, values

            def skipped():
                return jnp.zeros((b,), jnp.float32), jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k), jnp.float32)

            lp, ids, values = found() if record is True else jax.lax.cond(record, found, skipped)
            logprobs = logprobs.at[:, s.step].set(lp)
            top_ids, top_logprobs = top_ids.at[:, s.step].set(ids), top_logprobs.at[:, s.step].set(values)
        return DecodeState(s.step + 1, s.out.at[:, s.step].set(token), cache, step_logits[:, -1], done,
                           s.seen | jax.nn.one_hot(token, vocab, dtype=jnp.bool_), s.keys, logprobs, top_ids, top_logprobs)

    return jax.lax.while_loop(lambda s: (s.step < until) & ~jnp.all(s.done), body, s)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "mesh"), compiler_options=COMPILER_OPTIONS)
def _generate(graphdef, state, tokens, positions, segments, lengths, stop_ids, knobs, limits, key_data, *, max_new_tokens,
              greedy, mesh):
    def run():
        model = nnx.merge(graphdef, state)
        keys = jax.random.wrap_key_data(key_data)  # keys travel as raw uint32 data: a global array of them is plain
        s = _prefill(model, tokens, positions, segments, stop_ids, keys, max_new_tokens)
        s = _advance(model, s, lengths, stop_ids, knobs, limits, max_new_tokens, greedy)
        return s.out, s.step

    if mesh is None:
        return run()
    with activation_mesh(mesh):
        out, step = run()
    # Replicated: every process holds the whole answer, however the rows were laid out on the mesh.
    return jax.lax.with_sharding_constraint((out, step), NamedSharding(mesh, PartitionSpec()))


def past_context(prompt_len: int, context: int, what: str = "a prompt") -> str | None:
    """Why a prompt of `prompt_len` tokens cannot be answered within the model's context (its
    `max_len`, which `serve` enforces too), or None when it leaves room for a new token."""
    if prompt_len < context:
        return None
    return (f"{what} has {prompt_len} tokens; this model's maximum context length is {context} tokens, the prompt "
            "and at least one new token: shorten it")


def _check_prompts(model: Llama, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LimaError("every prompt needs at least one token")
    for p in prompts:
        if why := past_context(len(p), model.cfg.max_len):
            raise LimaError(why)
    vocab = model.cfg.used_vocab_size  # padding ids are not tokens
    for p in prompts:
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise LimaError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if not stop_ids:
        raise LimaError("no stop token: give the EOS (and EOT) ids")


def _left_padded(prompts: Sequence[Sequence[int]], width: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens, positions, segments (rows, width): every prompt ends at the last column; rows past the
    prompts hold one token (0), so that no row attends to nothing."""
    tokens = np.zeros((rows, width), np.int32)
    segments = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    for i in range(rows):
        p = prompts[i] if i < len(prompts) else [0]
        tokens[i, width - len(p):] = p
        segments[i, width - len(p):] = 1
        positions[i, width - len(p):] = np.arange(len(p))
    return tokens, positions, segments


def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int],
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> list[list[int]]:
    """The tokens generated for each prompt, up to and including its stop token, and at most what the
    model's context leaves after the prompt (as `serve` answers).

    A row draws from `seed` and its prompt alone, so a prompt samples the same text in any batch,
    file order or entry point. `mesh`: the one the model's parameters are laid out on, if any (see
    the module docstring)."""
    params.check()
    check_seed(seed)
    _check_prompts(model, prompts, stop_ids)
    tokens, positions, segments = _left_padded(prompts, bucket(max(len(p) for p in prompts)), len(prompts))
    # Per row (the compiled program stays one per max_new_tokens): no token past the model's context.
    limits = [min(params.max_new_tokens, model.cfg.max_len - len(p)) for p in prompts]
    if mesh is not None and jax.process_count() > 1:
        check_same("prompts (token ids)", [list(map(int, p)) for p in prompts])
    graphdef, state = nnx.split(model)
    inputs = (tokens, positions, segments, np.asarray([len(p) for p in prompts], np.int32),
              np.asarray(list(stop_ids), np.int32),
              {k: np.float32(getattr(params, k)) for k in KNOBS},
              np.asarray(limits, np.int32), np.asarray(jax.random.key_data(_row_keys(seed, [prompt_seed(p) for p in prompts]))))
    out, steps = _generate(graphdef, state, *_on(mesh, inputs),
                           max_new_tokens=params.max_new_tokens, greedy=params.temperature == 0, mesh=mesh)
    out = np.asarray(out.addressable_data(0))[:, : int(steps.addressable_data(0))]
    # A row past its own limit holds stop tokens it never sampled: cut at the limit first.
    return [_until_stop(row[:limit], stop_ids) for row, limit in zip(out.tolist(), limits)]


def _until_stop(row: list[int], stop_ids: Sequence[int]) -> list[int]:
    stops = [i for i, t in enumerate(row) if t in stop_ids]
    return row[: stops[0] + 1] if stops else row


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "mesh"), compiler_options=COMPILER_OPTIONS)
def _start_batch(graphdef, state, tokens, positions, segments, stop_ids, key_data, *, max_new_tokens, top_k, mesh):
    with activation_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return _prefill(nnx.merge(graphdef, state), tokens, positions, segments, stop_ids,
                        jax.random.wrap_key_data(key_data), max_new_tokens, top_k)


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"), donate_argnames=("s",),
                   compiler_options=COMPILER_OPTIONS)
def _continue_batch(graphdef, state, s, lengths, stop_ids, knobs, limits, cancel, until, greedy, record, *, mesh):
    """`greedy` and `record` are run-time bools: one decode program per batch shape serves greedy and
    sampling batches, with log-probabilities or without."""
    with activation_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        s = s._replace(done=s.done | cancel)
        return _advance(nnx.merge(graphdef, state), s, lengths, stop_ids, knobs, limits, until, greedy, record)


class BatchPrograms(NamedTuple):
    """A batch shape's two compiled programs (`compile_batch`): the prefill and the decode loop, each
    called with its jitted function's arguments less the static ones."""

    start: jax.stages.Compiled
    advance: jax.stages.Compiled


def compile_batch(model: Llama, *, rows: int, width: int, max_new_tokens: int, stop_ids: Sequence[int],
                  mesh: jax.sharding.Mesh | None = None, top_logprobs: int | None = None,
                  on_program: Callable[[], None] = lambda: None) -> BatchPrograms:
    """Compiles what a `SteppedBatch` of this shape runs, without running it (a warm-up has no use for
    the results). `on_program` is called after each of the two."""
    graphdef, state = nnx.split(model)
    spec = (lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)) if mesh is None else (
        lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec())))
    key_shape = jax.random.key_data(jax.random.key(0)).shape
    i32, f32 = jnp.int32, jnp.float32
    start = _start_batch.lower(graphdef, state, *(spec((rows, width), i32) for _ in range(3)),
                               spec((len(stop_ids),), i32), spec((rows, *key_shape), jnp.uint32),
                               max_new_tokens=max_new_tokens, top_k=top_logprobs, mesh=mesh).compile()
    on_program()
    s = jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=o.sharding), start.out_info)
    knobs = {k: spec((rows,), f32) for k in KNOBS}
    advance = _continue_batch.lower(graphdef, state, s, spec((rows,), i32), spec((len(stop_ids),), i32), knobs,
                                    spec((rows,), i32), spec((rows,), jnp.bool_), spec((), i32), spec((), jnp.bool_),
                                    spec((), jnp.bool_), mesh=mesh).compile()
    on_program()
    return BatchPrograms(start, advance)


SEEDS = (-(2**63), 2**63 - 1)  # what jax.random.key takes: a signed 64-bit integer


def check_seed(seed: int) -> None:
    if not SEEDS[0] <= seed <= SEEDS[1]:
        raise LimaError(f"seed {seed} is not a 64-bit integer (between {SEEDS[0]} and {SEEDS[1]})")


@dataclasses.dataclass(frozen=True)
class Row:
    """One sequence of a stepped batch: its prompt, its sampling knobs, its token budget and seed."""

    prompt: Sequence[int]
    params: SamplingParams  # max_new_tokens: this row's budget, at most the batch's
    seed: int

    def check(self) -> None:
        """What can fail for this row alone, checked before it joins a batch."""
        self.params.check()
        check_seed(self.seed)


class SteppedBatch:
    """The same generation as `generate`, a few steps per call: between calls a caller reads the
    tokens so far (to stream them) and may stop rows (a client gone, a stop string seen).

    Rows are padded to `rows` and prompts to `width` (at least the longest prompt), so a caller that
    keeps to a few (rows, width) pairs and one `max_new_tokens` reuses two compiled programs per pair
    (the prefill and the decode loop, greedy or sampling; `compile_batch` compiles them ahead and
    `programs` takes them). A row samples exactly what `generate` gives its prompt
    with its params and seed: its key comes from its seed and its prompt, the knobs are per row, and
    a row at temperature 0 takes the argmax of the raw logits. With `top_logprobs` K (0 included),
    the batch has room for each token's log-probability and the K most likely tokens at each step,
    and records them unless `record_logprobs` is False (the same programs either way)."""

    def __init__(self, model: Llama, sequences: Sequence[Row], *, rows: int, width: int, max_new_tokens: int,
                 stop_ids: Sequence[int], mesh: jax.sharding.Mesh | None = None, top_logprobs: int | None = None,
                 record_logprobs: bool = True, programs: BatchPrograms | None = None):
        prompts = [r.prompt for r in sequences]
        _check_prompts(model, prompts, stop_ids)
        if len(sequences) > rows or max(map(len, prompts)) > width:
            raise LimaError(f"{len(sequences)} prompts of up to {max(map(len, prompts))} tokens do not fit {rows} rows of {width}")
        for r in sequences:
            r.check()
            if r.params.max_new_tokens > max_new_tokens:
                raise LimaError(f"a row asks for {r.params.max_new_tokens} new tokens, the batch has room for {max_new_tokens}")
        self.graphdef, self.state = nnx.split(model)
        self.mesh, self.stop_ids, self.n = mesh, list(stop_ids), len(sequences)
        self.greedy = all(r.params.temperature == 0 for r in sequences)
        pad = rows - len(sequences)
        keys = np.zeros((rows, *jax.random.key_data(jax.random.key(0)).shape), np.uint32)
        for seed in {r.seed for r in sequences}:  # `generate`'s keys, one vectorized call per seed
            mine = [i for i, r in enumerate(sequences) if r.seed == seed]
            keys[mine] = np.asarray(jax.random.key_data(_row_keys(seed, [prompt_seed(prompts[i]) for i in mine])))
        knob = lambda name, fill: np.asarray([getattr(r.params, name) for r in sequences] + [fill] * pad, np.float32)
        self.inputs = _on(mesh, (
            np.asarray([len(p) for p in prompts] + [1] * pad, np.int32),
            np.asarray(self.stop_ids, np.int32),
            {k: knob(k, 1.0) for k in KNOBS},
            np.asarray([r.params.max_new_tokens for r in sequences] + [0] * pad, np.int32),
        ))
        self.cancelled = np.asarray([False] * len(sequences) + [True] * pad)  # padding rows are done from the start
        tokens, positions, segments = _left_padded(prompts, width, rows)
        started = _on(mesh, (tokens, positions, segments, np.asarray(self.stop_ids, np.int32), keys))
        if programs is None:
            self.s = _start_batch(self.graphdef, self.state, *started, max_new_tokens=max_new_tokens, top_k=top_logprobs,
                                  mesh=mesh)
        else:
            self.s = programs.start(self.state, *started)
        self.programs = programs
        self.with_logprobs = top_logprobs is not None and record_logprobs
        self.logprob_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.limits = [r.params.max_new_tokens for r in sequences]
        self.step = 0
        self.done = np.zeros(rows, bool)

    def advance(self, steps: int, cancel: Sequence[bool] = ()) -> list[list[int]]:
        """Runs up to `steps` more steps (fewer once every row is done), first stopping the rows
        marked in `cancel`; returns every row's tokens so far (up to and including its stop token)."""
        for i, c in enumerate(cancel):
            self.cancelled[i] |= bool(c)
        args = (*self.inputs, *_on(self.mesh, (self.cancelled, np.int32(self.step + steps), np.bool_(self.greedy),
                                               np.bool_(self.with_logprobs))))
        if self.programs is None:
            self.s = _continue_batch(self.graphdef, self.state, self.s, *args, mesh=self.mesh)
        else:
            self.s = self.programs.advance(self.state, self.s, *args)
        out, step, done = jax.device_get((self.s.out, self.s.step, self.s.done))
        self.step, self.done = int(step), np.asarray(done)
        if self.with_logprobs:
            self.logprob_arrays = jax.device_get((self.s.logprobs, self.s.top_ids, self.s.top_logprobs))
        # A row past its own limit holds stop tokens it never sampled: cut at the limit first.
        return [_until_stop(row[:limit], self.stop_ids)
                for row, limit in zip(np.asarray(out)[: self.n, : self.step].tolist(), self.limits)]

    @property
    def finished(self) -> bool:
        return bool(self.done[: self.n].all()) or self.step >= self.s.out.shape[1]

    def logprobs(self, row: int, start: int, stop: int) -> list[tuple[float, list[tuple[int, float]]]]:
        """For tokens start..stop-1 of `row` (after `advance`, in a batch made with `top_logprobs`):
        each token's log-probability under the model, and the most likely tokens with theirs."""
        logprobs, ids, values = self.logprob_arrays
        return [(float(logprobs[row, t]), list(zip(ids[row, t].tolist(), values[row, t].tolist())))
                for t in range(start, stop)]


def _on(mesh: jax.sharding.Mesh | None, inputs):
    """Host arrays as the jitted loop's inputs: on the default device, or, given a mesh, global arrays
    replicated over it (every process holds the same prompts; a multi-process jit takes only global
    arrays); the loop lays the rows out by the rules."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, inputs)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), replicated, lambda index: np.asarray(x)[index]),
                        inputs)


def prompt_seed(prompt: Sequence[int]) -> int:
    """A prompt's own seed: a hash of its token ids (31 bits, the same on every host and run)."""
    digest = hashlib.blake2b(np.asarray(prompt, "<i4").tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _row_keys(seed: int, row_seeds: Sequence[int]) -> jax.Array:
    """Each row's key: the seed folded with the row's own seed (one vectorized op, not one per row)."""
    rows = jnp.asarray([int(r) & 0x7FFFFFFF for r in row_seeds], jnp.uint32)
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows)
