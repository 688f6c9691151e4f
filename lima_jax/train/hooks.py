"""The loop's periodic work as one table: each hook runs after the steps `itstime` says (every N steps,
at given step counts, when the run stops early), in the order added. As Levanter's `add_hook` and
big_vision's `itstime`: the loop asks one question after each step."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable


def itstime(steps_done: int, every: int = 0, at: Iterable[int] = ()) -> bool:
    """Whether `steps_done` is a multiple of `every` (0: never by count) or one of `at`."""
    return bool(every and steps_done % every == 0) or steps_done in at


@dataclasses.dataclass(frozen=True)
class Hook:
    run: Callable[[int], None]  # called with the number of steps done
    every: int = 0
    at: frozenset[int] = frozenset()
    on_stop: bool = False  # also when the run stops before its last step (a preemption)


class Hooks:
    def __init__(self) -> None:
        self.table: list[Hook] = []

    def add(self, run: Callable[[int], None], *, every: int = 0, at: Iterable[int] = (), on_stop: bool = False) -> None:
        self.table.append(Hook(run, every, frozenset(at), on_stop))

    def __call__(self, steps_done: int, stopping: bool = False) -> None:
        """Runs every hook due after `steps_done` steps."""
        for hook in self.table:
            if itstime(steps_done, hook.every, hook.at) or (stopping and hook.on_stop):
                hook.run(steps_done)
