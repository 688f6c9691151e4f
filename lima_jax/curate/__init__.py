"""Raw dumps -> LIMA-format records with provenance: Stack Exchange, wikiHow and Reddit (LIMA §2.1).

`python -m lima_jax.curate` is the command (see `__main__`); `pipeline.curate` the library entry."""
