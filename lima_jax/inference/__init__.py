"""Inference: the compiled sampler (`sampler`: prefill + a `while_loop` of decode steps, LIMA's
sampling; its knobs are `sampling_params.SamplingParams`, which imports no JAX), a loaded checkpoint ready to
answer (`generator.Generator`), the chat loop (`chat`), and what commands running on every host of a
slice share (`hosts`: process 0 writes, decides, tells the others).
The commands are `python -m lima_jax.sample` and `python -m lima_jax.chat`; `python -m lima_jax.serve`
(its own package) serves a checkpoint over OpenAI's API on top of `sampler.SteppedBatch`."""
