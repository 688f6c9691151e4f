"""Compiled generation: one prefill, then a `lax.while_loop` of single-token decode steps.

LIMA samples with nucleus p 0.9, temperature 0.7 and a repetition penalty of 1.2 on the tokens it has
already generated (CTRL-style: a positive logit is divided by the penalty, a negative one multiplied),
for at most 2048 tokens. Temperature 0 is plain greedy decoding (the argmax of the model's logits,
with neither penalty nor nucleus), so it can be compared token for token with other implementations.

Prompts are left-padded to a bucketed length (padding has segment id 0 and is never attended to,
positions start at 0 at each prompt's first token), so new prompt lengths reuse a compiled program.
Each row stops on its own at a stop token (EOT or EOS); the loop ends when every row has stopped.

One seeding rule for every entry point (sample, evaluate.generate, chat, select): a row's randomness
comes from the seed and its prompt's token ids alone (`prompt_seed`), never from its place in a file
or a batch, so reordering, filtering or resuming a prompt set leaves every answer as it was.

Given a mesh (the training one: data, fsdp, tensor), the parameters stay where they are laid out,
the KV cache is placed by the same rules (rows over data/fsdp, KV heads over tensor) and the
activations are constrained as in training. The mesh may span several processes (every host of a
slice runs the same command with the same prompts): the prompts enter as global arrays replicated
over the mesh and the generated tokens leave replicated, so every process reads the whole answer.
Models meant for decoding hold their layers unstacked (`inference.layout.for_decoding`): on a CPU
that is what lets a step read the weights without copying them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lima_jax.errors import LimaError
from lima_jax.inference.hosts import check_same
from lima_jax.model import KVCache, Llama
from lima_jax.sharding import activation_mesh

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = 2048

    def check(self) -> None:
        if self.temperature < 0:
            raise LimaError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LimaError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise LimaError(f"--repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise LimaError(f"--max_new_tokens must be positive, got {self.max_new_tokens}")


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
    keep = (logits >= _from_ordered(hi)[:, None]) | (top_p >= 1.0)
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


def next_token(keys: jax.Array, logits: jax.Array, seen: jax.Array, params: dict[str, jax.Array], greedy: bool) -> jax.Array:
    """One token per row; `keys` (B,) are the rows' own keys, so a row's draw does not depend on
    which other prompts share its batch."""
    if greedy:
        return first_argmax(logits)
    logits = nucleus(repetition_penalty(logits, seen, params["repetition_penalty"]) / params["temperature"], params["top_p"])
    # Gumbel-max, exactly as jax.random.categorical draws, with the faster argmax.
    noise = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[1:], logits.dtype))(keys)
    return first_argmax(logits + noise)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "mesh"))
def _generate(graphdef, state, tokens, positions, segments, lengths, stop_ids, knobs, key_data, *, max_new_tokens, greedy, mesh):
    keys = jax.random.wrap_key_data(key_data)  # keys travel as raw uint32 data: a global array of them is plain
    if mesh is None:
        return _decode_loop(nnx.merge(graphdef, state), tokens, positions, segments, lengths, stop_ids, knobs, keys,
                            max_new_tokens, greedy)
    with activation_mesh(mesh):
        out, step = _decode_loop(nnx.merge(graphdef, state), tokens, positions, segments, lengths, stop_ids, knobs, keys,
                                 max_new_tokens, greedy)
    # Replicated: every process holds the whole answer, however the rows were laid out on the mesh.
    return jax.lax.with_sharding_constraint((out, step), NamedSharding(mesh, PartitionSpec()))


def _decode_loop(model, tokens, positions, segments, lengths, stop_ids, knobs, keys, max_new_tokens, greedy):
    b, p = tokens.shape
    cache = KVCache.zeros(model.cfg, b, p + max_new_tokens)
    logits, cache = model.decode(tokens, positions, segments, cache)
    vocab = logits.shape[-1]

    def body(carry):
        step, out, cache, logits, done, seen, keys = carry
        token = next_token(jax.vmap(jax.random.fold_in, (0, None))(keys, step), logits, seen, knobs, greedy)
        token = jnp.where(done, stop_ids[0], token)  # a stopped row repeats its stop token
        out = out.at[:, step].set(token)
        seen = seen | jax.nn.one_hot(token, vocab, dtype=jnp.bool_)
        done = done | jnp.isin(token, stop_ids)
        step_logits, cache = model.decode(token[:, None], (lengths + step)[:, None], jnp.ones((b, 1), jnp.int32), cache)
        return step + 1, out, cache, step_logits[:, -1], done, seen, keys

    def cond(carry):
        step, *_, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    init = (
        jnp.zeros((), jnp.int32),
        jnp.full((b, max_new_tokens), stop_ids[0], jnp.int32),
        cache,
        logits[:, -1],
        jnp.zeros((b,), jnp.bool_),
        jnp.zeros((b, vocab), jnp.bool_),
        keys,
    )
    step, out, *_ = jax.lax.while_loop(cond, body, init)
    return out, step


def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int],
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> list[list[int]]:
    """The tokens generated for each prompt, up to and including its stop token.

    A row draws from `seed` and its prompt alone, so a prompt samples the same text in any batch,
    file order or entry point. `mesh`: the one the model's parameters are laid out on, if any (see
    the module docstring)."""
    params.check()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LimaError("every prompt needs at least one token")
    vocab = model.cfg.used_vocab_size  # padding ids are not tokens
    for p in prompts:
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise LimaError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if not stop_ids:
        raise LimaError("no stop token: give the EOS (and EOT) ids")
    width = bucket(max(len(p) for p in prompts))
    tokens = np.zeros((len(prompts), width), np.int32)
    segments = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    for i, p in enumerate(prompts):  # left-pad: every prompt ends at the last column
        tokens[i, width - len(p):] = p
        segments[i, width - len(p):] = 1
        positions[i, width - len(p):] = np.arange(len(p))
    if mesh is not None and jax.process_count() > 1:
        check_same("prompts (token ids)", [list(map(int, p)) for p in prompts])
    graphdef, state = nnx.split(model)
    inputs = (tokens, positions, segments, np.asarray([len(p) for p in prompts], np.int32),
              np.asarray(list(stop_ids), np.int32),
              {k: np.float32(getattr(params, k)) for k in ("temperature", "top_p", "repetition_penalty")},
              np.asarray(jax.random.key_data(_row_keys(seed, [prompt_seed(p) for p in prompts]))))
    out, steps = _generate(graphdef, state, *_on(mesh, inputs),
                           max_new_tokens=params.max_new_tokens, greedy=params.temperature == 0, mesh=mesh)
    out = np.asarray(out.addressable_data(0))[:, : int(steps.addressable_data(0))]
    results = []
    for row in out.tolist():
        stops = [i for i, t in enumerate(row) if t in stop_ids]
        results.append(row[: stops[0] + 1] if stops else row)
    return results


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
