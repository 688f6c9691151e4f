"""The judging protocols, each tasks -> verdicts -> tallies: pairwise (both orders), absolute (Fail / Pass /
Excellent), Likert (1-6, Appendix D) and multi-turn dialogues (LIMA §6)."""
