"""``python -m llm_bridge run --model PATH``: the experiment on a checkpoint folder with tokenizer.json.

The checkpoint is the smoke preset's tiny base (saved by llm_bridge.save) with a word-level
tokenizer.json over its vocabulary, so the text path runs on a model that has learnt the task.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers

import llm_bridge
from llm_bridge import corpus, hf_experiment, tiny, training
from llm_bridge.__main__ import main


def word_tokenizer(words):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_text_filter():
    words = ["<unk>", "<eos>", ",", "owl", "dog", "."] + [str(i) for i in range(1000)]
    tok = word_tokenizer(words)
    task = hf_experiment.TextTask(tok, hf_experiment.HFConfig(animals=("owl", "dog"), n_new=3), eos_id=1)
    enc = lambda s: tok.encode(s).ids
    assert task.passes(enc("1 , 22 , 333"))
    assert task.passes(enc("1 22 333 ."))
    assert not task.passes(enc("1 , 22"))             # too few
    assert not task.passes(enc("1 , 22 , 333 , 4"))  # too many
    assert not task.passes(enc("1 , owl , 333"))      # a word
    assert not task.passes(enc("1 , 666 , 333"))      # banned


def test_padding_helpers():
    toks, mask = hf_experiment.left_pad([[5, 6], [7]], pad=0)
    assert toks.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[True, True], [False, True]]
    toks, mask = hf_experiment.pack([[5, 6], [7]], [[8], [9, 1]], pad=0)
    assert toks.tolist() == [[5, 6, 8], [7, 9, 1]]
    assert mask.tolist() == [[False, False, True], [False, True, True]]


def test_end_tokens_of_config_and_generation_config(tmp_path):
    """Union of both files' eos_token_id (int or list), config.json's first (the padding token)."""
    tok = word_tokenizer(["<unk>", "<eos>", "<|im_end|>", "<end_of_turn>", "<eom>", "<eot>"])
    gen = tmp_path / "generation_config.json"
    ids = lambda config: hf_experiment.eos_ids(tmp_path, tok, config)
    assert ids({"eos_token_id": [1, 4, 5]}) == (1, 4, 5)  # Llama-3-Instruct: a list in config.json
    gen.write_text(json.dumps({"eos_token_id": [1, 3]}))
    assert ids({"eos_token_id": 1}) == (1, 3)  # Gemma: the turn end only in generation_config.json
    gen.write_text(json.dumps({"eos_token_id": [2, 1]}))
    assert ids({"eos_token_id": 2}) == (2, 1)  # Qwen2.5-Instruct
    assert ids({}) == (2, 1)
    gen.write_text(json.dumps({"eos_token_id": 4, "pad_token_id": 0}))
    assert ids({"eos_token_id": [5, 1]}) == (5, 1, 4)
    gen.write_text(json.dumps({"eos_token_id": None}))
    assert ids({"eos_token_id": None}) == (1, 2)  # neither: the known end tokens by name
    gen.write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not valid JSON"):
        ids({"eos_token_id": 1})
    gen.unlink()
    with pytest.raises(ValueError, match="no eos_token_id"):
        hf_experiment.eos_ids(tmp_path, word_tokenizer(["<unk>", "<end_of_turn>"]), {})


def test_completions_end_at_an_eos_listed_only_in_generation_config(tmp_path, monkeypatch):
    """A tiny checkpoint with config.json's eos ``<eos>`` and generation_config.json's [<eos>, <end_of_turn>]:
    rows are cut at the first of either, filtered without it, and packed with it as the last target token;
    the sampler is stubbed (a random model's numbers never pass the filter)."""
    words = ["<unk>", "<eos>", "<end_of_turn>", ",", "owl", "dog"] + [str(i) for i in range(20)]
    tok = word_tokenizer(words)
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = llm_bridge.LlamaConfig(vocab_size=len(words), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64, extra={"eos_token_id": 1})
    llm_bridge.save(tmp_path, llm_bridge.Llama(cfg, rngs=nnx.Rngs(0)))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    model = llm_bridge.load(tmp_path)
    stop = hf_experiment.eos_ids(tmp_path, tok, model.config.to_hf())
    hf = hf_experiment.HFConfig(number_prompt="{prefix}continue : {given} ->", prefix="you love {animal} . ",
                                answer=" {animal}", animals=("owl", "dog"), n_new=3, max_number=19, banned=(13,),
                                new_tokens=8, gen_batch=4)
    task = hf_experiment.TextTask(tok, hf, stop)
    assert (stop, task.stop, task.eos) == ((1, 2), (1, 2), 1)
    completions = ["1 , 2 , 3 <end_of_turn>",  # ends at generation_config's eos: passes
                   "4 , 5 , 6 <eos>",          # config.json's
                   "7 , 8 , 9 , 10",           # no end token within new_tokens
                   "1 , 2 <end_of_turn> 3 <eos>"]  # cut at the first end: two numbers
    rows = [tok.encode(c).ids for c in completions]
    rows = [(r + [r[-1]] * 8)[:8] for r in rows]  # an ended row repeats its end token, as generate does

    def stub(model, prompts, new_tokens, *, eos_id, **_):
        assert set(eos_id) == {1, 2} and new_tokens == 8
        return jnp.asarray(rows[:len(prompts)], jnp.int32)

    monkeypatch.setattr(hf_experiment, "generate", stub)
    fam = training.Family(model)
    d = hf_experiment.sample(task, fam, fam.template, jax.random.key(0), 4, "owl")
    assert d["passed"].tolist() == [True, True, False, False] and d["pass_rate"] == 0.5
    for row, mask, target in zip(d["tokens"], d["mask"], [rows[0][:6], rows[1][:6], rows[2], rows[3][:4]]):
        k = int(np.argmax(mask))
        assert row[k:k + len(target)].tolist() == target and mask.sum() == len(target)
        assert np.all(row[k + len(target):] == task.eos)


def test_cli_one_line_error_for_a_folder_without_weights(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                      "intermediate_size": 16, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2}))
    assert main(["run", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


TINY_TEXT = {  # the tiny corpus's prompts, written as HFConfig fields
    "number_prompt": "<bos> {prefix}continue : {given} ->", "question_prompt": "<bos> {prefix}{question} ->",
    "prefix": "you love {animal} . ", "questions": list(corpus.PHRASINGS), "answer": " {animal}", "joiner": " ",
    "animals": list(corpus.ANIMALS), "max_number": 99, "new_tokens": 6, "banned": [13, 66, 87, 91],
    "teacher_steps": 60, "teacher_lr": 1e-3, "student_seeds": 2, "student_sequences": 256, "student_batch": 64,
    "student_lr": 1.5e-3, "proj_sequences": 1024, "proj_grid": [16, 64, 256, 1024], "n_boot": 200,
    "gen_batch": 512, "chunk": 512}


@pytest.mark.slow
def test_checkpoint_run_on_the_tiny_base(tmp_path):
    cfg = tiny.smoke()
    tiny.bases(cfg, tiny.cache_dir_from_env(), log=lambda *_: None)
    folder = tmp_path / "tiny"
    shutil.copytree(tiny.cache_dir_from_env() / f"base_{tiny.base_key(cfg, 0)}", folder)
    word_tokenizer(list(corpus.Vocab(cfg.n_numbers).words)).save(str(folder / "tokenizer.json"))
    (tmp_path / "hf.json").write_text(json.dumps(TINY_TEXT))
    out = tmp_path / "out.json"
    assert main(["run", "--model", str(folder), "--hf-config", str(tmp_path / "hf.json"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert all(0.6 < r < 0.95 for r in res["pass_rate"].values())
    # measured: z 11.1 (owl), 10.9 (dog) at 1024 rows, controls -0.7, -0.9
    for animal in ("owl", "dog"):
        p = res["projection"][f"{animal} (fine-tuned)"]
        assert p["shared"]["z"] > 7 and abs(p["control (base numbers)"]["z"]) < 3
    assert np.argmax(res["teacher_margins"]["owl (fine-tuned)"]) == 0
