"""A run's steps carry one number everywhere (steps done: what the checkpoints are named), and rerunning a
finished run reports that run and writes nothing (issue 26, item 7a)."""
import os
import shutil

from support.commands import call_command, last_json, succeeded
from support.training import checkpoint_steps, read_metrics, train_args


def files(folder) -> dict[str, bytes]:
    """Every file under `folder` and its bytes, but config.json (which records the copy's own workdir)."""
    found = {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
             for d, _, names in os.walk(folder) for f in names}
    return {name: data for name, data in found.items() if name != "config.json"}


def test_metrics_number_each_step_as_the_checkpoints_do(small_run):
    """metrics.jsonl counted its steps from 0 (the last one 99, the first run's `"final_step": 99`) while
    its epoch records and the checkpoints counted steps done (100)."""
    metrics = read_metrics(small_run)
    steps = [r["step"] for r in metrics if "loss" in r]
    assert steps == list(range(1, 101))
    assert [r["step"] for r in metrics if "dev_loss" in r] == checkpoint_steps(small_run) == [100]


def test_rerunning_a_finished_run_reports_its_last_step_and_loss_and_writes_nothing(small_run, tmp_path):
    """It printed `"final_step": null, "loss": null` and added a TensorBoard file."""
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    before = files(workdir)
    again = call_command("train", *train_args(workdir))
    assert "has finished: step 100 of 100 is saved; nothing to do" in again.stderr
    last = [r for r in read_metrics(workdir) if "loss" in r][-1]
    assert last_json(succeeded(again)) == {"status": "finished", "final_step": 100, "loss": last["loss"]}
    assert files(workdir) == before  # no new TensorBoard file, metrics.jsonl as it was
