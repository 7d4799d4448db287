"""``python -m llm_bridge run --model PATH``: the experiment on a checkpoint folder with tokenizer.json.

The checkpoint is the smoke preset's tiny base (saved by llm_bridge.save) with a word-level
tokenizer.json over its vocabulary, so the text path runs on a model that has learnt the task.
"""

import json
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from llm_bridge import corpus, experiment, hf_experiment
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
    cfg = experiment.smoke()
    experiment.bases(cfg, experiment.cache_dir_from_env(), log=lambda *_: None)
    folder = tmp_path / "tiny"
    shutil.copytree(experiment.cache_dir_from_env() / f"base_{experiment.base_key(cfg, 0)}", folder)
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
