"""Does the training loop's host wait for the device every step? A measurement, not a test.

    python -m lima_jax.bench.step_timing            # 2 processes x 4 simulated CPU devices
    python -m lima_jax.bench.step_timing 1 8        # 1 process x 8

Runs the real `train()` in several processes on one host and records when each step is dispatched
and when it finishes: a loop that keeps the device busy dispatches step k+1 before step k has
finished. Prints one JSON line per process; docs/bench.md says what its medians mean."""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

STEADY_SKIP = 3  # the first steps compile and warm up
OVERRIDES = {
    "num_epochs": 1,
    "batch_size": 16,
    "data.max_len": 128,
    "data.dev_size": 8,
    "model.residual_dropout": 0.0,
    "checkpoint.async_save": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int = 2, devices_per_process: int = 4) -> None:
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}", JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as workdir:
        procs = [
            subprocess.Popen([sys.executable, __file__, workdir, f"127.0.0.1:{port}", str(num_processes), str(i)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(num_processes)
        ]
        for p in procs:
            out, err = p.communicate(timeout=900)
            if p.returncode:
                sys.exit(f"process failed ({p.returncode}):\n{err[-3000:]}")
            print(out.strip().splitlines()[-1])


def worker(workdir: str, coordinator: str, num_processes: int, process_id: int) -> None:
    from lima_jax import sharding
    from lima_jax.config import load_config
    from lima_jax.train import loop

    sharding.initialize_distributed(coordinator, num_processes, process_id)
    timings = _Timings()
    timings.patch(loop)
    config = load_config("tiny", {**OVERRIDES, "workdir": workdir})
    t_start = time.perf_counter()
    loop.train(config)
    wall = time.perf_counter() - t_start
    timings.pending.put(None)
    timings.watcher.join()
    print(json.dumps({"process": process_id, **timings.summary(), "wall_s": round(wall, 1)}))


class _Timings:
    """When each train step was dispatched (the call's start and return), when it finished (a watcher
    thread blocks on its metrics, off the main thread), and how long each preemption check took."""

    def __init__(self):
        self.dispatched: list[tuple[float, float]] = []
        self.finished: list[float] = []
        self.check_seconds: list[float] = []
        self.pending: queue.Queue = queue.Queue()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        import jax

        while (metrics := self.pending.get()) is not None:
            jax.block_until_ready(metrics)
            self.finished.append(time.perf_counter())

    def patch(self, loop) -> None:
        """Wraps the loop's train step and preemption check to record their times."""
        jit_train_step, reached = loop.jit_train_step, loop.Preemption.reached

        def timed_jit_train_step(*args, **kwargs):
            step = jit_train_step(*args, **kwargs)

            def run(state, batch):
                t0 = time.perf_counter()
                state, metrics = step(state, batch)
                self.dispatched.append((t0, time.perf_counter()))
                self.pending.put(metrics)
                return state, metrics

            return run

        def timed_reached(preemption, step):
            t0 = time.perf_counter()
            try:
                return reached(preemption, step)
            finally:
                self.check_seconds.append(time.perf_counter() - t0)

        loop.jit_train_step = timed_jit_train_step
        loop.Preemption.reached = timed_reached

    def summary(self) -> dict:
        """Medians over the steady-state steps (past the warm-up, the epoch's end left out)."""
        import numpy as np

        n = len(self.dispatched)
        epoch_end = n - 1  # one epoch: the last step is followed by the dev loss and the save
        steady = [k for k in range(STEADY_SKIP, n - 1) if k + 1 != epoch_end]
        start = np.array([d[0] for d in self.dispatched])
        end = np.array([d[1] for d in self.dispatched])
        done = np.array(self.finished)
        ahead = [start[k + 1] < done[k] for k in steady]  # step k+1 dispatched while step k still ran
        idle = [max(0.0, start[k + 1] - done[k]) for k in steady]  # the device's idle gap, at most

        def ms(values) -> float:
            return round(1e3 * float(np.median(values)), 3)

        return {
            "steady_steps": len(steady),
            "dispatched_before_previous_finished": f"{sum(ahead)}/{len(steady)}",
            "median_preemption_check_ms": ms(np.array(self.check_seconds[-n:])[steady]),  # the in-loop checks
            "median_device_idle_between_steps_ms": ms(idle),
            "median_dispatch_call_ms": ms((end - start)[steady]),
            "median_dispatch_return_after_previous_finished_ms": ms([end[k + 1] - done[k] for k in steady]),
            "median_step_interval_ms": ms(np.diff(start)[steady]),
        }


if __name__ == "__main__":
    if len(sys.argv) <= 3:  # [NUM_PROCESSES [DEVICES_PER_PROCESS]]
        launch(*map(int, sys.argv[1:]))
    else:
        worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
