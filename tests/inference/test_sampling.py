"""The compiled sampler: greedy equals repeated full forwards, batching changes nothing, LIMA's
repetition penalty and nucleus cut are right, seeds reproduce, rows stop on their own."""
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.weights import checkpoint
from lima_jax import sharding
from lima_jax.model import KVCache, Llama, ModelConfig, param_shardings
from lima_jax.inference.generator import parse_mesh
from lima_jax.model.decode_layout import for_decoding
from lima_jax.inference.sampler import SamplingParams, bucket, first_argmax, generate, nucleus, repetition_penalty
from support.models import converted_checkpoint, forward
from support.commands import call_command, run_command

CFG = ModelConfig(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64, max_len=128, init_std=0.2)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
NO_STOP = (CFG.vocab_size + 5,)  # a stop id no row can produce: every row runs to the limit


@pytest.fixture(scope="module")
def model():
    return Llama(CFG, rngs=nnx.Rngs(3))


def test_greedy_equals_argmax_of_repeated_full_forwards(model):
    prompt = [1, 7, 22, 5]
    got = generate(model, [prompt], GREEDY, stop_ids=NO_STOP)[0]
    seq = list(prompt)
    width = len(prompt) + GREEDY.max_new_tokens  # one compiled width: the model is causal, so what follows
    for _ in range(GREEDY.max_new_tokens):  # position t (zeros here) cannot change its logits
        logits = forward(model, jnp.asarray([seq + [0] * (width - len(seq))]))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    assert got == seq[len(prompt):]
    assert len(set(got)) > 1


def test_a_seed_past_64_bits_is_one_line_naming_it(model):
    """`--seed=2**63` used to end in an OverflowError from inside jax.random.key."""
    from lima_jax.errors import LimaError

    for seed in (2**63, -(2**63) - 1):
        with pytest.raises(LimaError, match=rf"^seed {seed} is not a 64-bit integer"):
            generate(model, [[1, 7]], GREEDY, stop_ids=NO_STOP, seed=seed)


def test_a_batch_gives_each_prompt_what_it_gives_alone(model):
    prompts = [[1, 7], [1, 9, 14, 3, 30, 2, 8], [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55]]
    together = generate(model, prompts, GREEDY, stop_ids=NO_STOP)
    alone = [generate(model, [p], GREEDY, stop_ids=NO_STOP)[0] for p in prompts]
    assert together == alone


def test_rows_stop_on_their_own(model):
    prompts = [[1, 7], [1, 9, 14, 3]]
    free = generate(model, prompts, GREEDY, stop_ids=NO_STOP)
    stop = free[0][3]
    stopped = generate(model, prompts, GREEDY, stop_ids=(stop,))
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    assert stopped[1] == (free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = jnp.asarray([[2.0, -1.0, 0.5, -3.0]])
    seen = jnp.asarray([[True, True, False, False]])
    np.testing.assert_allclose(repetition_penalty(logits, seen, 1.2), [[2.0 / 1.2, -1.2, 0.5, -3.0]], rtol=1e-6)


def test_nucleus_keeps_the_smallest_set_reaching_p():
    probs = np.asarray([[0.5, 0.25, 0.15, 0.1]])
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda p: np.isfinite(np.asarray(nucleus(logits, p)))[0].tolist()
    assert kept(0.9) == [True, True, True, False]  # 0.5 + 0.25 < 0.9 <= 0.9: three tokens
    assert kept(0.75) == [True, True, False, False]
    assert kept(0.1) == [True, False, False, False]  # the top token always stays
    assert kept(1.0) == [True, True, True, True]
    shuffled = jnp.log(jnp.asarray([[0.1, 0.5, 0.15, 0.25]]))
    assert np.isfinite(np.asarray(nucleus(shuffled, 0.9)))[0].tolist() == [False, True, True, True]


def test_sampled_tokens_stay_inside_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.05, 0.05]]))
    from lima_jax.inference.sampler import next_token

    knobs = {"temperature": jnp.float32(1.0), "top_p": jnp.float32(0.8), "repetition_penalty": jnp.float32(1.0)}
    seen = jnp.zeros((1, 4), bool)
    draws = {int(next_token(jax.random.key(i)[None], logits, seen, knobs, False)[0]) for i in range(200)}
    assert draws == {0, 1}


def test_a_seed_reproduces_the_same_tokens(model):
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.2, max_new_tokens=16)
    a = generate(model, [[1, 7, 22]], params, stop_ids=NO_STOP, seed=5)
    b = generate(model, [[1, 7, 22]], params, stop_ids=NO_STOP, seed=5)
    c = generate(model, [[1, 7, 22]], params, stop_ids=NO_STOP, seed=6)
    assert a == b and a != c


def test_prompt_lengths_are_bucketed():
    assert [bucket(n) for n in (1, 16, 17, 100, 2048)] == [16, 16, 32, 128, 2048]


def test_cli_answers_a_prompt_file(tmp_path):
    ckpt = converted_checkpoint(tmp_path, 512)
    assert checkpoint.tokenizer_path(ckpt) is not None
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"conversations": ["What is 2 plus 2?"]}) + "\n"
                       + json.dumps({"conversations": ["Hi", "Hello", "Name a color."]}) + "\n")
    r = call_command("sample", f"--checkpoint={ckpt}", f"--prompt_file={prompts}", "--max_new_tokens=8", "--seed=1")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [line["prompt"] for line in lines] == [["What is 2 plus 2?"], ["Hi", "Hello", "Name a color."]]
    assert all(isinstance(line["output"], str) for line in lines)
    # Greedy ids on one device and with the weights and KV cache over a 2x2x2 mesh of the 8 test devices.
    greedy = [f"--checkpoint={ckpt}", f"--prompt_file={prompts}", "--max_new_tokens=8", "--temperature=0", "--print_ids"]
    one = call_command("sample", *greedy)
    meshed = call_command("sample", *greedy, "--mesh=fsdp=2,tensor=2")
    assert one.returncode == 0 and meshed.returncode == 0, meshed.stderr[-2000:]
    assert len(one.stdout.strip().splitlines()) == 2 and meshed.stdout == one.stdout
    r = call_command("sample", f"--checkpoint={ckpt}", "--prompt=x", "--top_p=0")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: --top_p must be in (0, 1], got 0.0"


@pytest.mark.parametrize("knob", ["temperature", "top_p", "repetition_penalty"])
def test_a_non_finite_sampling_knob_is_one_line_naming_it(knob):
    """NaN and infinity passed the range checks (`nan < 0` is false) and reached the sampler."""
    from lima_jax.errors import LimaError

    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(LimaError, match=rf"^--{knob} must be a finite number, got {value}$"):
            SamplingParams(**{knob: value}).check({knob: f"--{knob}"})  # named as the commands name their flags


def test_the_sampling_knobs_import_no_jax_and_name_no_flags():
    """Commands check their sampling flags before JAX loads; the library names a knob as its caller does."""
    import subprocess
    import sys

    from support.paths import REPO

    code = ("import sys, lima_jax.inference.sampling_params; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'numpy'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:] + r.stdout
    from lima_jax.errors import LimaError

    with pytest.raises(LimaError, match=r"^top_p must be in \(0, 1\], got 0$"):
        SamplingParams(top_p=0).check()
    with pytest.raises(LimaError, match=r"^max_tokens must be positive, got 0$"):
        SamplingParams(max_new_tokens=0).check({"max_new_tokens": "max_tokens"})


@pytest.mark.parametrize("command, args", [
    ("sample", ["--checkpoint=CKPT", "--prompt=x"]),
    ("chat", ["--checkpoint=CKPT"]),
    ("evaluate.generate", ["--checkpoint=CKPT", "--prompts=P", "--output=O"]),
])
def test_the_sampling_commands_refuse_nan_and_infinity(command, args):
    """Refused before anything is read: no checkpoint or prompt file needs to exist."""
    for flag, value in (("temperature", "nan"), ("repetition_penalty", "inf")):
        r = call_command(command, *args, f"--{flag}={value}")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: --{flag} must be a finite number, got {value}"


def test_sample_refuses_a_prompt_past_the_context_and_cuts_answers_at_it(tmp_path):
    """`sample` ran a prompt of the model's whole context (and sampled past it) where `serve` refuses it."""
    ckpt = converted_checkpoint(tmp_path, 512, max_len=32)
    greedy = [f"--checkpoint={ckpt}", "--max_new_tokens=5", "--temperature=0", "--print_ids"]
    r = call_command("sample", *greedy, "--prompt_ids=" + ",".join(["5"] * 32))
    assert r.returncode == 2 and re.match(r"^error: the prompt .+ has 32 tokens; this model's maximum context length "
                                          r"is 32 tokens", r.stderr.strip().splitlines()[-1]), r.stderr[-2000:]
    fits = call_command("sample", *greedy, "--prompt_ids=" + ",".join(["5"] * 31))  # room for one new token
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert len(fits.stdout.split()) == 1
    r = call_command("sample", f"--checkpoint={ckpt}", "--prompt=" + "seven " * 40)
    assert r.returncode == 2 and "this model's maximum context length is 32 tokens" in r.stderr.strip().splitlines()[-1]


def test_a_prompt_samples_the_same_text_in_any_batch(model):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
    a, b = [1, 7, 22], [1, 30, 31, 32, 33]
    together = generate(model, [a, b], params, stop_ids=NO_STOP, seed=2)
    alone = generate(model, [b], params, stop_ids=NO_STOP, seed=2)
    swapped = generate(model, [b, a], params, stop_ids=NO_STOP, seed=2)
    assert together[1] == alone[0] == swapped[0] and together[0] == swapped[1]
    assert generate(model, [b], params, stop_ids=NO_STOP, seed=3) != alone  # the seed still matters


def test_sampling_on_a_mesh_gives_the_single_device_tokens(model):
    """Weights laid out as in training (fsdp 2 x tensor 2 x data 2 over the 8 test devices), layers
    unstacked as the Generator holds them: the same greedy tokens as one device."""
    mesh = parse_mesh("fsdp=2,tensor=2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    params = nnx.to_pure_dict(nnx.state(model))
    placed = jax.device_put(params, param_shardings(CFG, mesh))
    sharded = nnx.merge(nnx.graphdef(model), nnx.state(model))
    nnx.update(sharded, placed)
    sharded = for_decoding(sharded, fuse_projections=False)  # as the Generator does on a mesh
    wq = sharded.layers[0].wq[...]
    assert "tensor" in str(wq.sharding.spec) and len(wq.sharding.device_set) == 8
    prompts = [[1, 7], [1, 9, 14, 3, 30, 2, 8], [1, 40, 41], [1, 2, 3, 4, 5]]
    alone = generate(model, prompts, GREEDY, stop_ids=NO_STOP)
    assert generate(sharded, prompts, GREEDY, stop_ids=NO_STOP, mesh=mesh) == alone


def test_scanned_decoding_samples_the_unrolled_tokens(model):
    """`decode_scan` (one lax.scan over the stacked layers and cache), alone and on a mesh."""
    scanned_cfg = CFG.replace(decode_scan=True)
    scanned = nnx.merge(nnx.graphdef(Llama(scanned_cfg, rngs=nnx.Rngs(0))), nnx.state(model))
    prompts = [[1, 7], [1, 9, 14, 3, 30, 2, 8], [1, 40, 41], [1, 2, 3, 4, 5]]
    unrolled = generate(model, prompts, GREEDY, stop_ids=NO_STOP)
    assert generate(scanned, prompts, GREEDY, stop_ids=NO_STOP) == unrolled
    mesh = parse_mesh("fsdp=2,tensor=2")
    placed = jax.device_put(nnx.to_pure_dict(nnx.state(model)), param_shardings(scanned_cfg, mesh))
    nnx.update(scanned, placed)
    assert generate(scanned, prompts, GREEDY, stop_ids=NO_STOP, mesh=mesh) == unrolled


def test_the_kv_cache_is_laid_out_by_the_training_rules():
    mesh = parse_mesh("tensor=2")
    with sharding.activation_mesh(mesh):
        cache = jax.jit(lambda: KVCache.zeros(CFG, 8, 16))()
    assert len(cache.k) == CFG.num_layers and cache.k[0].shape == (8, CFG.num_kv_heads, 16, CFG.resolved_head_dim)
    P, named = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
    assert cache.k[0].sharding.is_equivalent_to(named(mesh, P("data", "tensor")), 4)  # rows, KV heads
    assert cache.segment_ids.sharding.is_equivalent_to(named(mesh, P("data")), 2)


def test_a_bad_mesh_flag_is_one_line():
    from lima_jax.errors import LimaError

    with pytest.raises(LimaError, match="--mesh: 'pipeline=2'"):
        parse_mesh("pipeline=2")
    with pytest.raises(LimaError, match="does not divide"):
        parse_mesh("tensor=3")
    assert parse_mesh("") is None


def test_first_argmax_is_argmax_with_ties_to_the_first():
    x = jnp.asarray([[0.5, 2.0, 2.0, -1.0], [-jnp.inf, -3.0, -jnp.inf, -3.0], [7.0, 1.0, 7.0, 7.0]])
    assert first_argmax(x).tolist() == [1, 1, 0] == jnp.argmax(x, axis=-1).tolist()
    r = jax.random.normal(jax.random.key(0), (5, 1000))
    assert first_argmax(r).tolist() == jnp.argmax(r, axis=-1).tolist()


def test_sampling_draws_what_jax_random_categorical_draws():
    logits = jax.random.normal(jax.random.key(1), (3, 50)) * 3
    keys = jax.random.split(jax.random.key(2), 3)
    params = {"temperature": jnp.float32(1.0), "top_p": jnp.float32(1.0), "repetition_penalty": jnp.float32(1.0)}
    from lima_jax.inference.sampler import next_token

    ours = next_token(keys, logits, jnp.zeros((3, 50), bool), params, greedy=False)
    theirs = jax.vmap(jax.random.categorical)(keys, logits)
    assert ours.tolist() == theirs.tolist()


def sorted_nucleus(logits, top_p):
    """The definition, by sorting: keep tokens while the strictly more likely ones hold < top_p."""
    out = []
    for row in np.asarray(logits, np.float64):
        order = np.argsort(-row, kind="stable")
        probs = np.exp(row[order] - row.max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        keep = (before < top_p) | (top_p >= 1.0)  # p = 1 turns the cut off (as in transformers)
        keep[0] = True
        out.append(row >= row[order][keep].min())
    return np.asarray(out)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_bisected_nucleus_equals_the_sorted_definition(top_p):
    rng = np.random.default_rng(int(top_p * 1000))
    logits = np.concatenate([rng.normal(0, s, (4, 3000)) for s in (0.5, 2.0, 6.0)]).astype(np.float32)
    logits[0, :100] = -np.inf  # masked tokens
    logits[1, 5:9] = logits[1].max()  # a tie at the top
    kept = np.isfinite(np.asarray(nucleus(jnp.asarray(logits), top_p)))
    expected = sorted_nucleus(logits, top_p) & np.isfinite(logits)
    # Rounding may move a token sitting exactly on the boundary; nothing else may differ.
    assert (kept != expected).sum(axis=-1).max() <= 1
    assert (kept == expected).mean() > 0.9999


def test_ordered_ints_keep_the_float_order():
    from lima_jax.inference.sampler import _from_ordered, _to_ordered

    x = jnp.asarray([-jnp.inf, -3e38, -2.5, -1e-30, -0.0, 0.0, 1e-30, 1.0, 7.5, 3e38, jnp.inf], jnp.float32)
    ordered = np.asarray(_to_ordered(x))
    assert (np.diff(ordered) >= 0).all() and np.diff(ordered)[5:].min() > 0
    np.testing.assert_array_equal(np.asarray(_from_ordered(_to_ordered(x))), np.asarray(x))


def test_padding_ids_are_never_sampled():
    """A model with 61 real ids padded to 64 rows whose padding columns would win every argmax."""
    cfg = CFG.replace(vocab_size=64, vocab_padding=3)
    model = Llama(cfg, rngs=nnx.Rngs(3))
    model.lm_head[...] = model.lm_head[...].at[:, 61:].set(100.0)
    greedy = generate(model, [[1, 7, 22]], GREEDY, stop_ids=NO_STOP)[0]
    sampled = generate(model, [[1, 7, 22]] * 4, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12), stop_ids=NO_STOP)
    assert len(greedy) == 12 and max(greedy) < 61
    assert max(max(row) for row in sampled) < 61
    with pytest.raises(Exception, match="token id 62 is outside the vocabulary"):
        generate(model, [[1, 62]], GREEDY, stop_ids=NO_STOP)


def test_every_entry_point_samples_a_prompt_alike(tmp_path):
    """One seeding rule (the seed and the prompt): `sample` with the prompt alone or in a reordered
    file, `evaluate.generate` and the first turn of `chat` give the same answer."""
    prompts = ["What is 2 plus 2?", "Name a color.", "Hi"]
    converted = converted_checkpoint(tmp_path, 513)
    common = [f"--checkpoint={converted}", "--max_new_tokens=8", "--seed=5", "--temperature=1.0"]
    forward, backward = tmp_path / "forward.jsonl", tmp_path / "backward.jsonl"
    forward.write_text("".join(json.dumps({"conversations": [p]}) + "\n" for p in prompts))
    backward.write_text("".join(json.dumps({"conversations": [p]}) + "\n" for p in reversed(prompts)))
    answers = []
    for f in (forward, backward):
        r = call_command("sample", *common, f"--prompt_file={f}")
        assert r.returncode == 0, r.stderr[-2000:]
        answers.append({json.loads(ln)["prompt"][0]: json.loads(ln)["output"] for ln in r.stdout.splitlines()})
    assert answers[0] == answers[1] and len(set(answers[0].values())) == 3
    alone = call_command("sample", *common, "--prompt=Name a color.")
    assert alone.stdout.strip() == answers[0]["Name a color."].strip(), alone.stderr[-2000:]
    r = call_command("evaluate.generate", *common, f"--prompts={backward}", f"--output={tmp_path / 'responses.jsonl'}")
    assert r.returncode == 0, r.stderr[-2000:]
    generated = {json.loads(ln)["prompt"][0]: json.loads(ln)["output"] for ln in (tmp_path / "responses.jsonl").read_text().splitlines()}
    assert generated == answers[0]
    r = run_command("chat", *common, input="Name a color.\n/quit\n")  # stdin: a process of its own
    assert f"assistant: {answers[0]['Name a color.']}" in r.stdout, r.stdout + r.stderr[-2000:]


def _cache_copies_in_the_decode_loop(model: Llama, compiler_options: dict) -> list[str]:
    """The optimized HLO's copies of a KV-cache-shaped buffer in greedy `generate`'s program."""
    from lima_jax.inference import sampler

    graphdef, state = nnx.split(model)
    rows, prompt, new = 1, 16, 12
    inputs = sampler._on(None, (np.zeros((rows, prompt), np.int32),) * 3 + (
        np.full((rows,), prompt, np.int32), np.asarray(NO_STOP, np.int32),
        {k: np.float32(0) for k in ("temperature", "top_p", "repetition_penalty")}, np.full((rows,), new, np.int32),
        np.asarray(jax.random.key_data(jax.random.split(jax.random.key(0), rows)))))
    lowered = jax.jit(sampler._generate.__wrapped__, static_argnames=("graphdef", "max_new_tokens", "greedy", "mesh"),
                      compiler_options=compiler_options).lower(
        graphdef, state, *inputs, max_new_tokens=new, greedy=True, mesh=None)
    kv, dh, slots = CFG.num_kv_heads, CFG.resolved_head_dim, prompt + new
    shapes = (f"f32[{rows},{kv},{slots},{dh}]", f"f32[{rows},{kv},{dh},{slots}]")
    return [line for line in lowered.compile().as_text().splitlines()
            if " copy(" in line and any(s in line for s in shapes)]


def test_decode_steps_write_the_kv_cache_in_place(model):
    # Reading a layer's cache after writing the new token into it made XLA:CPU copy every layer's
    # cache twice a step (1.8 of 11.6 ms per token at the bench shape); now attention reads the
    # cache before the write and the sampler compiles with region-analysis copy insertion.
    from lima_jax.inference.sampler import COMPILER_OPTIONS

    decoding = for_decoding(Llama(CFG, rngs=nnx.Rngs(3)))
    assert _cache_copies_in_the_decode_loop(decoding, COMPILER_OPTIONS) == []
    assert _cache_copies_in_the_decode_loop(decoding, {}), "default copy insertion no longer copies: drop the option"


def test_cache_attention_equals_attention_over_the_written_cache():
    from lima_jax.model.attention import attention, cached_attention

    b, t, h, kv, dh, s = 2, 3, 4, 2, 8, 10
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731 (numpy: no compiles)
    rng = np.random.default_rng(0)
    q = normal(b, t, h, dh)
    k_new, v_new = normal(b, kv, t, dh), normal(b, kv, dh, t)
    k_cache, v_cache = normal(b, kv, s, dh), normal(b, kv, dh, s)
    index = jnp.int32(4)
    cache_segments = jnp.asarray([[0, 1, 1, 1] + [0] * 6, [1, 1, 2, 2] + [7] * 6], jnp.int32)  # stale ids past index
    q_segments = jnp.asarray([[1, 1, 1], [2, 2, 0]], jnp.int32)  # row 2 ends in padding
    got = jax.jit(cached_attention)(q, k_new, v_new, k_cache, v_cache, q_segments, cache_segments, index)
    written_k = jax.lax.dynamic_update_slice_in_dim(k_cache, k_new, index, axis=2)
    written_v = jax.lax.dynamic_update_slice_in_dim(v_cache, v_new, index, axis=3)
    written_segments = jax.lax.dynamic_update_slice_in_dim(cache_segments, q_segments, index, axis=1)
    slots = index + jnp.broadcast_to(jnp.arange(t), (b, t))
    want = jax.jit(attention)(q, written_k, written_v, q_segments, written_segments, slots)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sampling_a_prompt_longer_than_the_trained_rows_warns(small_run, capfd):
    from lima_jax.inference.generator import Generator
    from lima_jax.inference.sampler import SamplingParams

    generator = Generator(str(small_run))
    short, long = generator.encode(["What is 3 plus 4?"]), generator.encode(["What is 3 plus 4? " * 12])
    assert len(short) < 64 < len(long)
    capfd.readouterr()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=2)
    generator([short], greedy, 0)
    assert "warning" not in capfd.readouterr().err
    generator([short, long], greedy, 0)
    assert (f"warning: 1 of 2 prompts are longer than the 64 tokens {generator.path} was trained on (the longest has "
            f"{len(long)}); answers to them may degrade") in capfd.readouterr().err
