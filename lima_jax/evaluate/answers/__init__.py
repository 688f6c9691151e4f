"""Answers to judge: the response file (records), the other tools' formats (AlpacaEval, MT-Bench) and
generation into any of them, resumable."""
