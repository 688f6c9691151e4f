r"""Runs an ablation grid end to end, resumably, and writes its report.

    python -m lima_jax.ablate --grid=configs/ablations/tiny.py                 # CPU, demo data, minutes
    python -m lima_jax.ablate --grid=configs/ablations/quality.py \
        --grid.train.init_checkpoint=/ckpt/llama-7b --grid.test_prompts=/data/lima/test.jsonl

`--grid` takes a grid file or the name of one in configs/ablations/ (`--grid=quantity`); any of its keys
can be overridden with `--grid.a.b=value` (see `lima_jax.ablate.plan` for the keys). Each arm is
trained, its checkpoint chosen, its K samples per prompt generated and judged under
`<grid.workdir>/<arm>/`; a rerun does only what is missing (`lima_jax.ablate.runner`), then the report
is rewritten under `<grid.workdir>/report/` (`lima_jax.ablate.report`). The last line on stdout is JSON:
per arm, what this invocation did and the arm's mean score.
"""
from __future__ import annotations

import dataclasses
import json

from absl import flags

from lima_jax.ablate.plan import resolve_grid_path
from lima_jax.cli import define_config_flag, no_arguments, run
from lima_jax.log import say
from lima_jax.errors import LimaError

_GRID = define_config_flag("grid", None, "an ablation grid: configs/ablations/NAME.py or NAME; override keys with "
                           "--grid.a.b=value", resolve=lambda spec: resolve_grid_path(spec, {"grid": "--grid"}))
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "rewrite the report from what the arms hold; run nothing")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_samples", 1000, "resamples for each arm's 95% interval")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if _GRID.value is None:
        raise LimaError("--grid is required (e.g. --grid=configs/ablations/tiny.py)")
    from lima_jax.ablate import report, runner  # imports the evaluation libraries: not for --help

    grid = _GRID.value
    work = {} if _REPORT_ONLY.value else runner.run_grid(grid, say=say)
    written = report.write_report(grid, samples=_BOOTSTRAP.value)
    say(f"report: {report.REPORT_DIR}/report.md under {grid.workdir}")
    print(json.dumps({r["name"]: {**(dataclasses.asdict(work[r["name"]]) if r["name"] in work else {}),
                                  "mean": r["mean"], "ci": [r["ci_low"], r["ci_high"]], "n": r["n"]}
                      for r in written["arms"]}))


if __name__ == "__main__":
    run(main)
