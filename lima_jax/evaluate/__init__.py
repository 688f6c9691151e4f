r"""LIMA's evaluation. The commands (flags and the calls into the library) sit here:

    python -m lima_jax.evaluate.generate|pairwise|absolute|likert|dialogue|report|select --help

and beneath them the library, by role: `answers/` (response files, other tools' formats, generation),
`judge/` (the Judge protocol, the OpenAI-compatible and local judges, prompts, cache, runner, factory),
`protocols/` (pairwise, absolute, Likert, dialogue: tasks -> verdicts -> tallies), `stats`, `labels`,
`tables` and `charts` (the report), `epochs` (per-epoch checkpoint choice); `cli` holds what the
commands share (the judge flags).
"""
