"""Inference: the compiled sampler (`sampler`: prefill + a `while_loop` of decode steps, LIMA's
sampling), a loaded checkpoint ready to answer (`generator.Generator`), and the chat loop (`chat`).
The commands are `python -m lima_jax.sample` and `python -m lima_jax.chat`."""
