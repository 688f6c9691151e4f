r"""LIMA's evaluation: response files, an LLM judge, pairwise, absolute and Likert judging, and the report.

    python -m lima_jax.evaluate.pairwise --ours=ours.jsonl --baseline=alpaca.jsonl \
        --judge_url=https://api.openai.com/v1 --judge_model=gpt-4 --cache=alpaca_judgments.jsonl
    python -m lima_jax.evaluate.absolute --responses=ours.jsonl --judge_url=... --judge_model=... \
        --cache=absolute_judgments.jsonl
    python -m lima_jax.evaluate.likert --responses=ours.jsonl --judge_url=... --judge_model=gpt-3.5-turbo \
        --cache=likert_judgments.jsonl
    python -m lima_jax.evaluate.report --pairwise="Alpaca 65B=alpaca_judgments.jsonl" \
        --absolute=absolute_judgments.jsonl --likert="LIMA=likert_judgments.jsonl" --out_dir=report/
"""
