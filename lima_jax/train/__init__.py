"""Training: the loop (`loop.train`, run by `python -m lima_jax.train`) with its periodic work as a table
(`hooks`), the workdir contract and lock (`run_dir`), stopping on a preemption (`preemption`), the pure
step (`step`), the state laid out on a mesh and the jitted steps (`state`), LIMA's optimizer
(`optimizer`), the run's checkpoints (`checkpoints`), what a user sees of a run (`metrics`), what a run
starts from besides a random init (`init_weights`), and the same step compiled ahead of time for a TPU
slice (`aot`) or checked with the real data first (`dry_run`)."""
