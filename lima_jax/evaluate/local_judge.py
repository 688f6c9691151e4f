"""A lima_jax checkpoint as the judge: the verdict is read from the log-probabilities of the answers.

The pairwise and absolute prompts ask for a last line `Verdict: X`. Instead of sampling a
justification, the judge scores each choice X as the continuation of "Verdict: " at the start of its
answer (for the Likert prompt, of nothing: the score itself opens the answer) and takes the most
likely one: deterministic, one forward pass per judgment, and never unreadable. Choices that differ
only in their last token share one row of that pass (the prompt is scored once, not once per choice).
"""
from __future__ import annotations

import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.evaluate.judges import JudgeFailure, Messages
from lima_jax.evaluate.prompts import VERDICT_LINE
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import bucket

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
        self._forward = jax.jit(lambda tokens: jax.nn.log_softmax(self.generator.model(tokens), axis=-1))

    def _prefix(self, messages: Messages) -> list[int]:
        # System and user messages form one user turn; the answer starts with "Verdict: ".
        request = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
        return self.generator.encode([request])

    def choice_logprobs(self, messages: Messages, choices: Sequence[str]) -> dict[str, float]:
        tok = self.generator.tokenizer.text
        prefix = self._prefix(messages)
        # Encode "Verdict: X" whole, so X is tokenized as it would follow the prefix in text.
        head = tok.encode(self.answer_prefix.rstrip())
        continuations = [tok.encode(self.answer_prefix + c)[len(head):] for c in choices]
        shared = _common_prefix(continuations)
        if all(len(c) == len(shared) + 1 for c in continuations):
            # The choices differ in their last token only (A/B/C, or the Likert digits after "▁"): one row,
            # the prompt scored once, every choice read at its last position.
            rows = [prefix + head + shared]
            at = [(0, len(prefix) + len(head) + j, t) for j, t in enumerate(shared)]
            logp = self._log_probs(rows)
            common = sum(float(logp[r, p - 1, t]) for r, p, t in at)
            return {choice: common + float(logp[0, len(rows[0]) - 1, cont[-1]]) for choice, cont in zip(choices, continuations)}
        rows = [prefix + head + c for c in continuations]
        logp = self._log_probs(rows)
        start = len(prefix) + len(head)
        return {choice: float(sum(logp[i, start + j - 1, t] for j, t in enumerate(cont)))
                for i, (choice, cont) in enumerate(zip(choices, continuations))}

    def _log_probs(self, rows: list[list[int]]) -> np.ndarray:
        """Next-token log-probabilities at every position of each row, rows padded to a bucket: judging
        prompts of similar lengths share one compiled forward pass."""
        longest = max(map(len, rows))
        width = max(longest, min(bucket(longest), self.generator.model.cfg.max_len))
        tokens = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r  # right padding: causal attention never sees it
        return np.asarray(self._forward(jnp.asarray(tokens)))

    def verdict(self, prompt_messages: Messages, choices: Sequence[str]) -> tuple[str, str]:
        scores = self.choice_logprobs(prompt_messages, choices)
        if not all(np.isfinite(v) for v in scores.values()):
            raise JudgeFailure("the judge model gave non-finite log-probabilities", raw=json.dumps(scores))
        best = max(scores, key=scores.get)
        return best, json.dumps({"logprobs": scores})


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    shared = []
    for tokens in zip(*sequences):
        if len(set(tokens)) > 1:
            break
        shared.append(tokens[0])
    return shared
