"""The engine: one thread that gathers the sequences waiting, runs them as one batch of the
sampler (`inference.sampler.SteppedBatch`) a few steps at a time, and hands each its text as it grows.

Batching is batch-synchronous: a batch is formed from what is waiting, padded to a compiled batch size
and prompt width, and decoded until every row is done; sequences arriving meanwhile form the next
batch. Rows do not join a running batch (continuous batching) because the KV cache has one write index
for the whole batch (`model.KVCache.index`). Between chunks of steps (1, then 2, 4, ... up to
`chunk_steps`, so the first token streams right after the prefill) the engine streams the new text,
applies stop strings, and stops the rows whose client has gone. Every program is compiled ahead,
without being run (`warm_up`, then a compiler thread of its own while requests are served); one
compiled while a request waits is reported on stderr."""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Callable, Sequence

from tqdm import tqdm

from lima_jax.errors import LimaError
from lima_jax.log import say
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampler import BatchPrograms, Row, SamplingParams, SteppedBatch, compile_batch


@dataclasses.dataclass(frozen=True)
class Update:
    """What a sequence has produced since the last update: new text, and at the end why it ended."""

    text: str
    finish_reason: str | None = None  # "stop" (a stop token or string), "length", or None while running
    completion_tokens: int = 0
    error: str | None = None  # the batch failed (the server keeps serving)
    # With log-probabilities asked for: (token id, log-probability, [(id, log-probability)] of the most
    # likely) for each token whose text this update completes.
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None


@dataclasses.dataclass(eq=False)
class Choice:
    """One choice of one request: submitted by the server, filled in by the engine thread."""

    prompt: list[int]
    params: SamplingParams
    seed: int
    stop: list[str]
    on_update: Callable[[Update], None]  # called from the engine thread
    top_logprobs: int | None = None  # None: no log-probabilities; else how many of the most likely tokens
    cancelled: bool = False  # set by the server when its client goes
    sent: str = ""  # the text already handed over
    tokens_sent: int = 0  # the tokens whose log-probabilities were handed over
    finished: bool = False


class Engine:
    def __init__(self, generator: Generator, *, batch_sizes: Sequence[int], widths: Sequence[int], max_tokens: int,
                 chunk_steps: int = 16, batch_wait_s: float = 0.01, max_logprobs: int | None = 20):
        self.generator = generator
        self.max_logprobs = max_logprobs  # the top-K the log-probability programs record; None: none compiled
        self.batch_sizes, self.widths = sorted(batch_sizes), sorted(widths)
        self.max_tokens, self.chunk_steps, self.batch_wait_s = max_tokens, chunk_steps, batch_wait_s
        self.waiting: queue.Queue[Choice] = queue.Queue()
        self.programs: dict[tuple[int, int], BatchPrograms] = {}  # (batch size, prompt width): its two programs
        # Counters for /metrics: how the engine batched what it was given.
        self.stats = {"batches": 0, "sequences": 0, "padding_rows": 0, "decode_steps": 0, "cancelled": 0}
        self._later: list[tuple[int, int]] = []  # (batch size, width) pairs `warm_up` left to the compiler thread
        self._compiling = threading.Lock()  # held while a batch shape compiles (one at a time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lima_jax.serve engine", daemon=True)
        # Its own thread, so that requests for the shapes already compiled are served meanwhile.
        self._compiler = threading.Thread(target=self._compile_later, name="lima_jax.serve compiler", daemon=True)

    @property
    def largest(self) -> int:
        return self.batch_sizes[-1]

    @property
    def compiled(self) -> int:
        return 2 * len(self.programs)

    def warm_up(self, before_serving: int | None = None) -> None:
        """Compiles, without running them, the two programs (prefill; decode loop, greedy or sampling,
        with log-probabilities or not) of each batch size and prompt width. Those of the `before_serving`
        smallest widths (all by default) are compiled now, with a progress bar; the others are compiled
        by a thread of their own once the engine starts, one batch shape at a time, every width at batch
        size 1 first, while requests are served (one that needs a shape not compiled yet waits for it)."""
        start = time.perf_counter()
        now = self.widths[: len(self.widths) if before_serving is None else max(1, before_serving)]
        self._later = [(rows, w) for rows in self.batch_sizes for w in self.widths if w not in now]
        shapes = [(rows, width) for width in now for rows in self.batch_sizes]
        with tqdm(total=2 * len(shapes), desc="serve: compiling", unit="program", leave=False) as bar:
            for rows, width in shapes:
                self._compile(rows, width, lambda: bar.update(1))
        later = f"; prompts past {now[-1]} tokens compile in the background" if self._later else ""
        say(f"serve: compiled {self.compiled} programs ({len(self.batch_sizes)} batch sizes x {len(now)} prompt "
            f"widths) in {time.perf_counter() - start:.1f}s{later}")

    def _compile(self, rows: int, width: int, on_program=lambda: None) -> BatchPrograms:
        g = self.generator
        self.programs[rows, width] = compile_batch(g.model, rows=rows, width=width, max_new_tokens=self.max_tokens,
                                                   stop_ids=g.stop_ids, mesh=g.mesh, top_logprobs=self.max_logprobs,
                                                   on_program=on_program)
        return self.programs[rows, width]

    def _compile_later(self) -> None:
        """The compiler thread: the batch shapes `warm_up` left, one at a time. A shape that fails to
        compile (out of memory, say) is named in one line and left to the request that needs it."""
        while not self._stop.is_set():
            with self._compiling:
                if not self._later:
                    return
                rows, width = self._later.pop(0)
                start = time.perf_counter()
                try:
                    self._compile(rows, width)
                    line = (f"serve: compiled the programs for batch size {rows}, prompts of up to {width} tokens, in "
                            f"{time.perf_counter() - start:.1f}s ({self.compiled} in all"
                            f"{', more to come' if self._later else ''})")
                except Exception as e:  # noqa: BLE001 - the server keeps serving the shapes it has
                    line = (f"serve: compiling batch size {rows}, prompts of up to {width} tokens, failed "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); a request that "
                            "needs it compiles it")
            if not self._stop.is_set():  # nothing printed while the server shuts down
                say(line)

    def start(self) -> None:
        """Starts the engine thread, and the compiler thread when `warm_up` left shapes to it."""
        self._thread.start()
        if self._later:
            self._compiler.start()

    def stop(self) -> None:
        """Stops the engine (after its batch's current chunk). The compiler thread is a daemon and is not
        waited for: a large shape compiles for a minute, and a stopping server has no use for it."""
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, sequences: list[Choice]) -> None:
        for s in sequences:
            self.waiting.put(s)

    def _batch(self, rows: list[Row], size: int, width: int, logprobs: bool) -> SteppedBatch:
        g = self.generator
        programs = self.programs.get((size, width))
        if programs is None:
            start = time.perf_counter()
            with self._compiling:  # after the shape the compiler thread is on, if any (it may be this one)
                programs = self.programs.get((size, width))
                if programs is None:
                    if (size, width) in self._later:
                        self._later.remove((size, width))
                    programs = self._compile(size, width)
            say(f"serve: a request waited {time.perf_counter() - start:.1f}s for the programs for batch size {size}, "
                f"prompts of up to {width} tokens, compiled after warm-up")
        return SteppedBatch(g.model, rows, rows=size, width=width, max_new_tokens=self.max_tokens, stop_ids=g.stop_ids,
                            mesh=g.mesh, top_logprobs=self.max_logprobs, record_logprobs=logprobs, programs=programs)

    def _gather(self) -> list[Choice]:
        """The first sequence waiting, then more while they keep coming (each within `batch_wait_s` of
        the last, for at most 10 of those waits): clients answered together come back together."""
        try:
            batch = [self.waiting.get(timeout=0.1)]
        except queue.Empty:
            return []
        now = time.perf_counter()
        deadline, last_call = now + self.batch_wait_s, now + 10 * self.batch_wait_s
        while len(batch) < self.largest:
            try:
                batch.append(self.waiting.get(timeout=max(0.0, deadline - time.perf_counter())))
            except queue.Empty:
                break
            deadline = min(time.perf_counter() + self.batch_wait_s, last_call)
        self.stats["cancelled"] += sum(s.cancelled for s in batch)
        return [s for s in batch if not s.cancelled]

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._checked(self._gather())
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - one failed batch must not stop the server
                for s in batch:
                    if not s.finished:
                        s.finished = True
                        s.on_update(Update("", error=f"{type(e).__name__}: {e}"))

    def _checked(self, batch: list[Choice]) -> list[Choice]:
        """The sequences that can join a batch; one that cannot fails alone, never the batch around it."""
        kept = []
        for s in batch:
            try:
                Row(s.prompt, s.params, s.seed).check()
            except LimaError as e:
                s.finished = True
                s.on_update(Update("", error=str(e)))
            else:
                kept.append(s)
        return kept

    def _run(self, batch: list[Choice]) -> None:
        size = next(b for b in self.batch_sizes if b >= len(batch))
        width = next(w for w in self.widths if w >= max(len(s.prompt) for s in batch))
        stepped = self._batch([Row(s.prompt, s.params, s.seed) for s in batch], size, width,
                              any(s.top_logprobs is not None for s in batch))
        self.stats["batches"] += 1
        self.stats["sequences"] += len(batch)
        self.stats["padding_rows"] += size - len(batch)
        steps = 1  # the first token right after the prefill, then chunks doubling up to chunk_steps
        while not all(s.finished for s in batch):
            tokens = stepped.advance(steps, [s.cancelled or s.finished for s in batch])
            steps = min(2 * steps, self.chunk_steps)
            for i, (s, ids) in enumerate(zip(batch, tokens)):
                if s.cancelled and not s.finished:
                    s.finished = True  # nobody is listening
                    self.stats["cancelled"] += 1
                elif not s.finished:
                    self._update(s, ids, bool(stepped.done[i]) or stepped.finished, stepped, i)
        self.stats["decode_steps"] += stepped.step

    def _update(self, s: Choice, ids: list[int], done: bool, stepped: SteppedBatch, row: int) -> None:
        """Hands over the text that can no longer change: not a partial character, nor the start
        of a stop string; at the end, the rest and why it ended."""
        stops = self.generator.stop_ids
        text = self.generator.decode(ids)
        cut = min((i for i in (text.find(stop) for stop in s.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, done, reason = text[:cut], True, "stop"
        else:
            reason = "stop" if ids and ids[-1] in stops else "length"
        if not done:
            hold = max((len(stop) - 1 for stop in s.stop), default=0)
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip("\ufffd")  # a character whose bytes are not all generated yet
        if not text.startswith(s.sent):  # decoding more tokens changed earlier text: wait
            if not done:
                return
            text = s.sent  # never take back what was sent
        delta, s.sent = text[len(s.sent):], text
        logprobs = self._logprobs(s, ids, done and cut < 0, stepped, row)
        if done:
            s.finished = True
            s.on_update(Update(delta, reason, len(ids), logprobs=logprobs))
        elif delta or logprobs:
            s.on_update(Update(delta, logprobs=logprobs))

    def _logprobs(self, s: Choice, ids: list[int], all_of_them: bool, stepped: SteppedBatch, row: int) -> list | None:
        """The log-probabilities of the tokens (stop token excluded) whose text is now handed over:
        every one when the sequence ended on its own, else those whose text is a prefix of what was sent."""
        if s.top_logprobs is None:
            return None
        content = ids[:-1] if ids and ids[-1] in self.generator.stop_ids else ids
        end = s.tokens_sent
        if all_of_them:
            end = len(content)
        else:
            while end < len(content) and s.sent.startswith(self.generator.decode(content[: end + 1])):
                end += 1
        found = stepped.logprobs(row, s.tokens_sent, end)
        out = [(t, lp, top[: s.top_logprobs]) for t, (lp, top) in zip(content[s.tokens_sent: end], found)]
        s.tokens_sent = end
        return out


def prompt_widths(context: int) -> list[int]:
    """Prompt lengths that share a compiled program: 64, 256, 1024, ... and the context itself."""
    widths, w = [], 64
    while w < context:
        widths.append(w)
        w *= 4
    return widths + [context]
