"""Checkpoint selection's library: the per-epoch Likert table and Figure 9's plot, from a scripted judge."""
from support.charts import check_png
from support.judges import Reply, ScriptedServer

from lima_jax.evaluate.answers.records import make_record, write_responses


def test_likert_per_epoch_table_and_figure_9_plot(tmp_path):
    """The library on constructed epochs: each epoch's dev answers scored by a scripted server, one
    cache per epoch, and a rerun asks nothing."""
    from lima_jax.evaluate import epochs
    from lima_jax.evaluate.judge.factory import make_judge, with_answer_format
    from lima_jax.evaluate.judge.prompts import LIKERT_LINE
    from lima_jax.storage.paths import user_path

    out = user_path(str(tmp_path))
    rows = [{"epoch": e, "step": 10 * e, "dev_loss": 1.0 + e / 10, "dev_perplexity": 2.0 + e} for e in (1, 2)]
    plan = {1: ["2", "3", "I am not sure."], 2: ["5", "6", "5"]}  # epoch 1's third answer is unreadable
    for row in rows:
        (tmp_path / "responses").mkdir(exist_ok=True)
        write_responses(epochs.responses_file(out, row),
                        [make_record([f"dev {i}"], f"E{row['epoch']}-{i}", f"epoch {row['epoch']}") for i in range(3)])

    def script(r):
        epoch, i = map(int, r.user_text.split("[Submission]: E")[1].split()[0].split("-"))
        return Reply("Reasoning.\n" + plan[epoch][i])

    with ScriptedServer(script) as server:
        judge = make_judge(judge_checkpoint=None, judge_url=server.url, judge_model="judge-model", timeout_s=2.0,
                           max_retries=1, backoff_s=0.0)  # as select builds it: for pairwise prompts ...
        likert = with_answer_format(judge, LIKERT_LINE)  # ... and the same judge for Likert ones
        assert judge.parser is not likert.parser and likert.name == judge.name
        epochs.likert_epochs(rows, likert, epochs.open_likert_caches(rows, out), out, samples=200)
        assert server.hits == 2 + 2 + 3  # the unreadable one asked twice
        again = [dict(r) for r in rows]
        epochs.likert_epochs(again, likert, epochs.open_likert_caches(rows, out), out, samples=200)
        assert server.hits == 9  # only the failure asked again
    first, second = rows
    assert (first["likert_mean"], first["likert_n"], first["likert_failures"]) == (2.5, 2, 1)
    assert (second["likert_mean"], second["likert_n"], second["likert_failures"]) == (5.333, 3, 0)
    assert second["likert_ci_low"] <= 5.333 <= second["likert_ci_high"] <= 6
    assert again == rows
    assert len((tmp_path / "likert" / "step_10.jsonl").read_text().splitlines()) == 2 + 2  # the failure, twice
    table = epochs.write_table(rows, out / "select.md")
    assert "Likert mean [95%] | scored | failed |" in table
    assert f"| 2 | 20 | 1.2000 | 4.00 | 5.33 [{second['likert_ci_low']:.2f}, {second['likert_ci_high']:.2f}] | 3 | 0 |" in table
    epochs.plot(rows, out / "select.png")
    check_png(tmp_path / "select.png")


def test_the_ablations_choice_takes_the_best_epoch_and_the_earlier_of_a_tie():
    from lima_jax.evaluate import epochs

    rows = [{"epoch": 1, "dev_loss": 2.0, "likert_mean": 4.0}, {"epoch": 2, "dev_loss": 1.5, "likert_mean": None},
            {"epoch": 3, "dev_loss": 1.5, "likert_mean": 4.0}, {"epoch": 4, "dev_loss": 1.7, "likert_mean": 3.5}]
    assert epochs.best_epoch(rows, "likert")["epoch"] == 1  # 4.0 twice: the earlier; nothing scored: last
    assert epochs.best_epoch(rows, "dev_loss")["epoch"] == 2
    assert epochs.best_epoch(rows, "epoch")["epoch"] == 1  # a fixed epoch: the one row its range kept
    assert epochs.best_epoch([dict(rows[1])], "likert")["epoch"] == 2
