"""Ablations in one command (LIMA §5): `python -m lima_jax.ablate --grid=configs/ablations/NAME.py`.

A grid (`plan`) names its arms, each a dataset or a seeded draw of N examples from one; `runner` trains
each arm with the recipe, chooses its checkpoint, samples K answers per test prompt and scores them 1-6
with the Likert judge, resumably; `report` writes the table and the Figure-5/6 charts."""
