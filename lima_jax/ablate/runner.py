"""Runs a grid's arms: each arm's data drawn, trained with the recipe, its checkpoint chosen, K samples per
test prompt generated; then every arm's samples scored 1-6 by the Likert judge.

The stages call the libraries of `train` and `evaluate` in this process (not their commands as
subprocesses): the arms share one JAX runtime, so the tiny grid compiles its step and sampler once,
and a bad grid value is a one-line error before the first arm trains. Nothing is done twice: each
stage's output under `<grid workdir>/<arm>/` is kept and continued on a rerun, and samples drawn with
other settings are refused (docs/ablation.md)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import ml_collections

from lima_jax.ablate.plan import Arm, Choice, arms, check_required, prepare_data, train_config, workdir_of
from lima_jax.errors import LimaError
from lima_jax.evaluate import epochs
from lima_jax.evaluate.answers.formats import read_prompts, read_responses
from lima_jax.evaluate.answers.generation import ResponseSink, generate_answers
from lima_jax.evaluate.answers.records import Record, text_hash
from lima_jax.evaluate.judge import factory as judge_factory
from lima_jax.evaluate.judge.cache import JudgmentCache
from lima_jax.evaluate.judge.runner import check_max_failures, stop_message
from lima_jax.evaluate.judge.prompts import LIKERT_LINE
from lima_jax.evaluate.protocols.likert import judge_likert, score_key
from lima_jax.inference.sampler import SamplingParams
from lima_jax.storage.paths import Path, write_atomically
from lima_jax.weights import checkpoint

STATE_FILE = "arm.json"
RESPONSES_FILE = "responses.jsonl"
LIKERT_FILE = "likert.jsonl"


def read_state(arm: Arm) -> dict[str, Any]:
    path = arm.dir / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _update_state(arm: Arm, **values: Any) -> dict[str, Any]:
    state = {**read_state(arm), **values}
    write_atomically(arm.dir / STATE_FILE, json.dumps(state, ensure_ascii=False, indent=1) + "\n")
    return state


@dataclasses.dataclass
class ArmWork:
    """What one invocation did for an arm (all zero / False on a rerun of a finished grid)."""

    trained: bool = False
    chose: bool = False
    generated: int = 0
    judged: int = 0


def sampling_params(grid: ml_collections.ConfigDict) -> SamplingParams:
    params = SamplingParams(**grid.sampling.to_dict())
    params.check({name: f"--{name}" for name in grid.sampling.to_dict()})  # as the sampling commands name them
    return params


def test_questions(grid: ml_collections.ConfigDict) -> list:
    """The prompts every arm answers: `test_prompts`, the first N."""
    if not grid.test_prompts:
        raise LimaError("grid key test_prompts: empty; the prompts to answer (LIMA's test.jsonl)")
    questions, _ = read_prompts(grid.test_prompts)
    if grid.num_test_prompts < 0:
        raise LimaError(f"grid key num_test_prompts: must be 0 (all) or more, got {grid.num_test_prompts}")
    return questions[: grid.num_test_prompts or None]


def train_arm(arm: Arm, config: ml_collections.ConfigDict, say: Callable[[str], None]) -> bool:
    """Trains (or resumes) the arm's run unless arm.json says it finished; whether it trained now."""
    if read_state(arm).get("trained"):
        return False
    from lima_jax.train.loop import train  # JAX: only when there is training to do

    say(f"arm {arm.name}: training in {arm.run_dir}")
    last = train(config)
    if last["status"] != "finished":
        raise LimaError(f"arm {arm.name}: training was {last['status']}; rerun the same command to resume")
    _update_state(arm, trained={"final_step": last.get("step"), "loss": last.get("loss")})
    return True


def choose_checkpoint(arm: Arm, choice: Choice, judge_factory: Callable[[], Any], params: SamplingParams,
                      seed: int) -> tuple[dict[str, Any], bool]:
    """The arm's checkpoint as `choice` picks it (kept in arm.json); whether it was chosen now."""
    kept = read_state(arm).get("checkpoint")
    if kept and kept.get("choice") == _choice_text(choice):
        return kept, False
    if kept and (arm.dir / "samples").exists():  # samples of the other checkpoint must not pass for this one's
        raise LimaError(f"arm {arm.name}: its samples are from the checkpoint chosen by {kept['choice']!r} (step "
                        f"{kept['step']}), not {_choice_text(choice)!r}: use another grid workdir, or delete "
                        f"{arm.dir}/samples, responses.jsonl and likert.jsonl to redo them")
    if choice.kind == "last":
        path = checkpoint.resolve(arm.run_dir)
        chosen = {"step": int(path.name), "epoch": None, "path": str(path)}
    else:
        rows = [r for r in epochs.epoch_checkpoints(arm.run_dir) if choice.lo <= r["epoch"] <= choice.hi]
        if not rows:
            raise LimaError(f"arm {arm.name}: no epoch checkpoint with a dev loss in epochs {choice.lo}-{choice.hi} "
                            f"(checkpoint={_choice_text(choice)})")
        if choice.kind == "likert":
            rows = _likert_rows(arm, rows, judge_factory(), params, seed)
        best = epochs.best_epoch(rows, choice.kind)
        chosen = {"step": best["step"], "epoch": best["epoch"], "path": str(best["checkpoint"]),
                  "dev_loss": best["dev_loss"], **({"likert_mean": best["likert_mean"]} if "likert_mean" in best else {})}
    chosen["choice"] = _choice_text(choice)
    _update_state(arm, checkpoint=chosen)
    return chosen, True


def _choice_text(choice: Choice) -> str:
    return choice.kind if (choice.kind == "last" or (choice.lo, choice.hi) == (0, 10**9)) else (
        f"epoch:{choice.lo}" if choice.kind == "epoch" else f"{choice.kind}:{choice.lo}-{choice.hi}")


def _likert_rows(arm: Arm, rows: list, judge, params: SamplingParams, seed: int) -> list:
    """`evaluate.select --likert` on the arm's run: each epoch's dev answers scored 1-6."""
    out = arm.dir / "select"
    caches = epochs.open_likert_caches(rows, out)
    epochs.generate_epochs(rows, epochs.dev_prompts(arm.run_dir), out, params, seed)
    epochs.likert_epochs(rows, judge, caches, out)
    epochs.write_table(rows, out / "select.md")
    epochs.plot(rows, out / "select.png")
    return rows


def sample_file(arm: Arm, k: int) -> Path:
    return arm.dir / "samples" / f"sample_{k}.jsonl"


def _answered(path: Path) -> set[str]:
    return set(read_responses(path)) if path.exists() and path.read_text(encoding="utf-8").strip() else set()


def generate_samples(arm: Arm, ckpt: str, questions: list, k_samples: int, params: SamplingParams, seed: int,
                     batch_size: int) -> int:
    """Samples 1..K of every question (the files' missing ones only; the checkpoint is loaded only if
    some are missing), then the merged responses.jsonl; returns how many answers were generated now."""
    how = {"checkpoint": ckpt, "seed": seed, **dataclasses.asdict(params)}
    kept = read_state(arm).get("sampling")
    if kept and kept != how:
        changed = sorted(k for k in how if kept.get(k) != how[k])
        raise LimaError(f"arm {arm.name}: its samples were drawn with other {', '.join(changed)} "
                        f"({', '.join(f'{k}={kept.get(k)!r}' for k in changed)}): use another grid workdir, or "
                        f"delete {arm.dir}/samples, responses.jsonl and likert.jsonl to redo them")
    if not kept:
        _update_state(arm, sampling=how)
    wanted = {q.turn_id(i) for q in questions for i in range(len(q.asks))}
    todo = [k for k in range(1, k_samples + 1) if not wanted <= _answered(sample_file(arm, k))]
    count = 0
    if todo:
        from lima_jax.inference.generator import Generator  # JAX: only when there is sampling to do

        generator = Generator(ckpt)
        for k in todo:
            count += generate_answers(generator, questions, ResponseSink(sample_file(arm, k), arm.name), params,
                                      seed + k - 1, batch_size)
    merged = merged_responses(arm, questions, k_samples)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged.values())
    target = arm.dir / RESPONSES_FILE
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        write_atomically(target, text)
    return count


def merged_responses(arm: Arm, questions: list, k_samples: int) -> dict[str, Record]:
    """{`<prompt id>#k`: record} over the K sample files, for the asked questions only, in prompt order."""
    per_k = [read_responses(sample_file(arm, k)) for k in range(1, k_samples + 1)]
    ids = [q.turn_id(i) for q in questions for i in range(len(q.asks))]
    merged = {}
    for rid in dict.fromkeys(ids):
        for k, records in enumerate(per_k, 1):
            merged[f"{rid}#{k}"] = {**records[rid], "id": f"{rid}#{k}"}
    return merged


def judge_name(judge: ml_collections.ConfigDict, chosen: dict[str, dict[str, Any]]) -> str:
    """The name the judge's verdicts are cached under, known without loading a local judge."""
    target = judge_checkpoint(judge, chosen)
    return f"local:{checkpoint.resolve(target)}" if target else judge.model


def judge_checkpoint(judge: ml_collections.ConfigDict, chosen: dict[str, dict[str, Any]]) -> str | None:
    """The local judge's checkpoint: a path, or `arm:NAME` for that arm's chosen checkpoint."""
    spec = judge.checkpoint
    if not spec.startswith("arm:"):
        return spec or None
    name = spec[len("arm:"):]
    if name not in chosen:
        raise LimaError(f"grid key judge.checkpoint={spec!r}: no arm {name!r} (arms: {', '.join(chosen)})")
    return chosen[name]["path"]


def make_judge(judge: ml_collections.ConfigDict, chosen: dict[str, dict[str, Any]] | None = None):
    target = judge_checkpoint(judge, chosen or {})
    return judge_factory.make_judge(judge_checkpoint=target, judge_url=judge.url or None,
                                    judge_model=judge.model or None, workers=judge.workers, answer=LIKERT_LINE,
                                    api_key_env=judge.api_key_env, timeout_s=judge.timeout_s,
                                    max_retries=judge.max_retries)


def _check_judge(grid: ml_collections.ConfigDict, choice: Choice) -> None:
    judge = grid.judge
    if bool(judge.checkpoint) == bool(judge.url):
        raise LimaError("grid key judge: give judge.checkpoint (a path or arm:NAME) or judge.url with judge.model")
    if judge.url and not judge.model:
        raise LimaError("grid key judge.model: empty; the judge endpoint's model, e.g. gpt-3.5-turbo")
    if choice.kind == "likert" and judge.checkpoint.startswith("arm:"):
        raise LimaError("grid keys checkpoint=likert and judge.checkpoint=arm:NAME: an arm's checkpoint cannot judge "
                        "the choice of the checkpoints; name a judge checkpoint or endpoint")


def run_grid(grid: ml_collections.ConfigDict, say: Callable[[str], None] = print) -> dict[str, ArmWork]:
    """Runs (or continues) every arm; returns what each arm needed doing in this invocation."""
    check_required(grid)
    all_arms = arms(grid)
    workdir_of(grid).mkdir(parents=True, exist_ok=True)
    choice = Choice.parse(grid.checkpoint)
    _check_judge(grid, choice)
    if grid.samples_per_prompt < 1:
        raise LimaError(f"grid key samples_per_prompt: must be at least 1, got {grid.samples_per_prompt}")
    params = sampling_params(grid)
    questions = test_questions(grid)
    configs = {arm.name: train_config(grid, arm) for arm in all_arms}  # every arm's config checked first
    work = {arm.name: ArmWork() for arm in all_arms}
    selection_judge: list = []

    def judge_for_choice():  # loaded once, and only if a likert choice has epochs to score
        if not selection_judge:
            selection_judge.append(make_judge(grid.judge))
        return selection_judge[0]

    chosen: dict[str, dict[str, Any]] = {}
    for arm in all_arms:
        draw = prepare_data(arm, configs[arm.name].data.dev_size, grid.seed)
        say(f"arm {arm.name}: {draw['train_examples']} training and {draw['dev_examples']} dev examples drawn "
            f"from {draw['source']} ({draw['source_examples']}, seed {draw['seed']})")
        work[arm.name].trained = train_arm(arm, configs[arm.name], say)
        chosen[arm.name], work[arm.name].chose = choose_checkpoint(arm, choice, judge_for_choice, params, grid.seed)
        say(f"arm {arm.name}: checkpoint step {chosen[arm.name]['step']} ({chosen[arm.name]['choice']})")
        work[arm.name].generated = generate_samples(arm, chosen[arm.name]["path"], questions, grid.samples_per_prompt,
                                                    params, grid.seed, grid.generation_batch_size)
    name = judge_name(grid.judge, chosen)
    responses = {arm.name: read_responses(arm.dir / RESPONSES_FILE) for arm in all_arms}
    caches = {arm.name: JudgmentCache(arm.dir / LIKERT_FILE) for arm in all_arms}
    pending = [a.name for a in all_arms
               if any(not caches[a.name].done(score_key(name, rid, text_hash(r["output"])))
                      for rid, r in responses[a.name].items())]
    if pending:
        judge = make_judge(grid.judge, chosen)
        max_failures = check_max_failures(grid.judge.max_failures)
        for arm in all_arms:
            if arm.name in pending:
                result = judge_likert(responses[arm.name], judge, caches[arm.name], workers=grid.judge.workers,
                                      max_failures=max_failures, progress=False)
                work[arm.name].judged = result.stats.asked
                say(f"arm {arm.name}: {result.stats.asked} judgments asked; mean {result.summary['mean']} over "
                    f"{result.summary['scored']} scored, {result.summary['failed']} failed")
                if result.stats.stopped:
                    raise LimaError(stop_message(result.stats, max_failures or 0))
    return work
