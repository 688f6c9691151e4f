"""How many of its demo training answers a tiny run gives back word for word (greedy), and, given two
runs, how many answers differ between them.

    python -m lima_jax.train --config=tiny --config.workdir=A
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python -m lima_jax.train --config=tiny --config.workdir=B
    python examples/compare_tiny_answers.py A B

The second run uses other XLA:CPU kernels, as another CPU would: its float rounding differs, not its
recipe (2026-12-06, this repo's 2-core host: 530 and 529 of 804 exact, 168 answers differing).
"""
import json
import sys

from lima_jax.data import demo_dir
from lima_jax.inference.generator import Generator
from lima_jax.inference.sampling_params import SamplingParams


def main(runs: list[str]) -> None:
    records = [json.loads(line) for line in (demo_dir() / "train.jsonl").read_text().splitlines()]
    pairs = [r["conversations"] for r in records if len(r["conversations"]) == 2]
    answers = {}
    for run in runs:
        generator = Generator(run)
        params = SamplingParams(temperature=0.0, max_new_tokens=48)
        out = []
        for i in range(0, len(pairs), 64):
            ids = generator([generator.encode([q]) for q, _ in pairs[i:i + 64]], params, 0)
            out += [generator.decode([t for t in x if t not in generator.stop_ids]) for x in ids]
        answers[run] = out
        exact = sum(a.strip() == want.strip() for a, (_, want) in zip(out, pairs))
        print(f"{run}: {exact}/{len(pairs)} training answers given back exactly")
    if len(runs) == 2:
        a, b = answers[runs[0]], answers[runs[1]]
        differ = [(q, x, y) for (q, _), x, y in zip(pairs, a, b) if x != y]
        print(f"answers that differ between the runs: {len(differ)}/{len(pairs)}")
        for q, x, y in differ[:5]:
            print(f"  {q!r}: {x!r} | {y!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
