"""Where files live: one path type for every path a user names, local or `gs://` (paths), and the
start-up that points every Cloud Storage client at an emulator when `STORAGE_EMULATOR_HOST` is set
(emulator), and where JAX keeps the programs it compiles (compile_cache).

The path type is `etils.epath.Path`, which Orbax uses too; `pathlib` is kept for paths the code
makes locally itself (the embedded demo, a local cache).
"""
