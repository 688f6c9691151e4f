"""SIGTERM (a TPU preemption, a SLURM time limit) or Ctrl-C asks the loop to save and stop, alike on
every host."""
from __future__ import annotations

import signal
import sys

import jax

from lima_jax.log import say


class Preemption:
    """SIGTERM (a TPU preemption, a SLURM time limit) asks the loop to save and stop; `reached(steps_done)`
    answers alike on every host, without touching the device.

    One process: our own handler sets a flag, and a second SIGTERM ends the process at once. Several:
    JAX's coordination service owns SIGTERM (its preemption notifier installs a handler at
    `jax.distributed.initialize`; ours would replace it) and, once any host is notified, agrees over RPC
    on the first step every host can still reach. Exiting the `with` block puts the previous handler back.
    """

    def __init__(self) -> None:
        self.requested = False
        self._reported = 0  # the last step number told to JAX's sync protocol
        self._installed = jax.process_count() == 1
        self._synced = not self._installed and jax.config.jax_enable_preemption_service
        if self._installed:  # Ctrl-C saves too; a second one stops at once
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        elif not self._synced:
            say("jax_enable_preemption_service is off: SIGTERM stops this run without saving")

    def __enter__(self) -> "Preemption":
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:  # a handler set outside Python (getsignal's None) cannot be put back: the default
            for sig, previous in self._previous.items():
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the save
        # A second SIGTERM ends the process at once, even a run stuck where no Python handler runs
        # (native code, a hung write): a scheduler's retry must never meet a run that cannot stop.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        say(f"{name} received: saving a checkpoint and stopping after this step ({again} again stops at once)")
        self.requested = True

    def reached(self, steps_done: int) -> bool:
        """Whether to save and stop after `steps_done` steps; a resumed run asks first with its start."""
        if not self._synced:
            return self.requested
        from jax.experimental import multihost_utils

        # The sync point is one past the furthest host's last reported step number, so every number is
        # reported, in order, from 1: a notice during start-up may land on one a resumed run never runs.
        hit = False
        for number in range(self._reported + 1, steps_done + 1):
            hit = multihost_utils.reached_preemption_sync_point(number) or hit
        self._reported = max(self._reported, steps_done)
        return hit


def tell_every_host(message: str) -> None:
    """Why this host stopped: each host's log says so (not only process 0's)."""
    prefix = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
    print(prefix + message, file=sys.stderr, flush=True)
