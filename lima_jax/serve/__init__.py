"""An OpenAI-compatible server for a checkpoint (`python -m lima_jax.serve`): `protocol` (requests and
responses), `batching` (the engine batching concurrent requests into the sampler), `app` (the routes)."""
