"""Training: the loop (`loop.train`, run by `python -m lima_jax.train`), the pure step (`step`), the
state laid out on a mesh and the jitted steps (`state`), LIMA's optimizer (`optimizer`), the run's
checkpoints (`checkpoints`), what a user sees of a run (`metrics`), and the same step compiled ahead
of time for a TPU slice (`aot`)."""
