"""A lima_jax checkpoint as the judge: the verdict is read from the log-probabilities of the answers.

The pairwise and absolute prompts ask for a last line `Verdict: X`. Instead of sampling a
justification, the judge scores each choice X as the continuation of "Verdict: " at the start of its
answer (for the Likert prompt, of nothing: the score itself opens the answer) and takes the most
likely one: deterministic, one forward pass per judgment, and never unreadable.
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
        rows = [prefix + head + c for c in continuations]
        # Padded to a bucket: judging prompts of similar lengths share one compiled forward pass.
        longest = max(map(len, rows))
        width = max(longest, min(bucket(longest), self.generator.model.cfg.max_len))
        tokens = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r  # right padding: causal attention never sees it
        logp = np.asarray(self._forward(jnp.asarray(tokens)))
        scores = {}
        for i, (choice, cont) in enumerate(zip(choices, continuations)):
            start = len(prefix) + len(head)
            scores[choice] = float(sum(logp[i, start + j - 1, t] for j, t in enumerate(cont)))
        return scores

    def verdict(self, prompt_messages: Messages, choices: Sequence[str]) -> tuple[str, str]:
        scores = self.choice_logprobs(prompt_messages, choices)
        if not all(np.isfinite(v) for v in scores.values()):
            raise JudgeFailure("the judge model gave non-finite log-probabilities", raw=json.dumps(scores))
        best = max(scores, key=scores.get)
        return best, json.dumps({"logprobs": scores})
