"""A lima_jax checkpoint as the judge: the verdict is read from the log-probabilities of the answers.

The pairwise and absolute prompts ask for a last line `Verdict: X`. Instead of sampling a
justification, the judge scores each choice X as the continuation of "Verdict: " at the start of its
answer (for the Likert prompt, of nothing: the score itself opens the answer) and takes the most
likely one: deterministic and never unreadable. The prompt, with the tokens every choice shares,
runs once into a KV cache; each choice's remaining tokens run against that cache (none at all when
the choices differ in one last token: the prompt's last position scores them all). The weights are
arguments of the compiled program, never constants in it: checkpoints of one shape share programs.
A prompt and answer that do not fit the judge's context are a failed judgment, as on a server.
"""
from __future__ import annotations

import functools
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.evaluate.judge.prompts import VERDICT_LINE
from lima_jax.evaluate.judge.protocol import JudgeFailure, Messages
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import MIN_BUCKET, bucket
from lima_jax.model import KVCache

ANSWER_PREFIX = VERDICT_LINE.prefix


class LocalJudge:
    """Implements the `Judge` protocol with a local checkpoint (fine-tuned or base)."""

    def __init__(self, checkpoint: str, answer_prefix: str = ANSWER_PREFIX):
        self.answer_prefix = answer_prefix
        self.generator = Generator(checkpoint)
        if self.generator.tokenizer is None:
            raise JudgeFailure(f"{checkpoint} has no tokenizer to read the judging prompt with")
        # The resolved step, not the path given: a workdir that gains a newer step is a new judge.
        self.name = f"local:{self.generator.path}"
        self._graphdef, self._state = nnx.split(self.generator.model)

    def _prefix(self, messages: Messages) -> list[int]:
        # System and user messages form one user turn; the answer starts with "Verdict: ".
        request = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
        return self.generator.encode([request])

    def choice_logprobs(self, messages: Messages, choices: Sequence[str]) -> dict[str, float]:
        """Each choice's log-probability as the start of the answer. Raises JudgeFailure when the
        prompt and the longest choice do not fit the judge's context."""
        tok = self.generator.tokenizer.text
        prefix = self._prefix(messages)
        # Encode "Verdict: X" whole, so X is tokenized as it would follow the prefix in text.
        head = tok.encode(self.answer_prefix.rstrip())
        continuations = [tok.encode(self.answer_prefix + c)[len(head):] for c in choices]
        longest = len(prefix) + len(head) + max(map(len, continuations))
        if longest > (context := self.generator.model.cfg.max_len):
            raise JudgeFailure(f"the judging prompt and its answer take {longest} tokens, past the {context}-token "
                               f"context of the judge {self.generator.path}")
        # Every choice keeps at least one token of its own: its first one is read at the context's last position.
        shared = _common_prefix(continuations)[:min(map(len, continuations)) - 1]
        start = len(prefix) + len(head)
        context = prefix + head + shared
        own = [c[len(shared):] for c in continuations]
        along, last, after = self._log_probs(context, own)
        common = float(sum(along[start + j - 1] for j in range(len(shared))))
        return {choice: common + float(last[o[0]]) + float(after[i, : len(o) - 1].sum())
                for i, (choice, o) in enumerate(zip(choices, own))}

    def _log_probs(self, context: list[int], own: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the context, each token's log-probability given those before it, and the next token's
        log-probabilities; for each choice's own tokens o, those of o[1:] (row i, padded with zeros).
        The context is padded (`_width`): judging prompts of similar lengths share one program."""
        width = _width(len(context), self.generator.model.cfg.max_len)
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(context)] = context  # right padding: causal attention never sees it
        targets = np.zeros(width, np.int32)
        targets[: len(context) - 1] = context[1:]
        rest = max(map(len, own)) - 1
        suffixes = np.zeros((len(own), rest), np.int32)
        suffix_targets = np.zeros_like(suffixes)
        for i, o in enumerate(own):
            suffixes[i, : len(o) - 1] = o[:-1]
            suffix_targets[i, : len(o) - 1] = o[1:]
        out = _score(self._graphdef, self._state, tokens, len(context), targets, suffixes, suffix_targets)
        return tuple(np.asarray(a) for a in out)

    def verdict(self, prompt_messages: Messages, choices: Sequence[str]) -> tuple[str, str]:
        scores = self.choice_logprobs(prompt_messages, choices)
        if not all(np.isfinite(v) for v in scores.values()):
            raise JudgeFailure("the judge model gave non-finite log-probabilities", raw=json.dumps(scores))
        best = max(scores, key=scores.get)
        return best, json.dumps({"logprobs": scores})


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score(graphdef, state, tokens, length, targets, suffixes, suffix_targets):
    """`LocalJudge._log_probs` on the device: the context (1, W) runs once into a KV cache, the
    choices' tokens (C, S) run against copies of it, and only the log-probabilities asked for
    come back (not the (W, V) array: 400 MB for 2,048 tokens of a 49k vocabulary)."""
    model = nnx.merge(graphdef, state)
    width = tokens.shape[1]
    choices, rest = suffixes.shape
    positions = jnp.arange(width, dtype=jnp.int32)[None]
    segments = (positions < length).astype(jnp.int32)  # padding is segment 0: no real token attends to it
    logits, cache = model.decode(tokens, positions, segments, KVCache.zeros(model.cfg, 1, width + rest))
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    along = jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]
    last = logp[length - 1]
    if not rest:
        return along, last, jnp.zeros((choices, 0), jnp.float32)
    batch = 1 if model.cfg.decode_scan else 0  # a scanned cache stacks the layers first
    cache = KVCache(jax.tree.map(lambda a: jnp.repeat(a, choices, axis=batch), cache.k),
                    jax.tree.map(lambda a: jnp.repeat(a, choices, axis=batch), cache.v),
                    jnp.repeat(cache.segment_ids, choices, axis=0), cache.index)
    positions = length + jnp.broadcast_to(jnp.arange(rest, dtype=jnp.int32), suffixes.shape)
    logits, _ = model.decode(suffixes, positions, jnp.ones_like(suffixes), cache)
    after = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), suffix_targets[..., None], axis=-1)[..., 0]
    return along, last, after


def _width(n: int, max_len: int) -> int:
    """A row for n tokens: n rounded up to an eighth of the next power of two, within max_len. At most four
    programs per doubling of the length, and a quarter of padding at most (a power of two pads a
    1,100-token prompt to 2,048)."""
    step = max(MIN_BUCKET, bucket(n) // 8)
    return max(n, min(-(-n // step) * step, max_len))


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    shared = []
    for tokens in zip(*sequences):
        if len(set(tokens)) > 1:
            break
        shared.append(tokens[0])
    return shared
