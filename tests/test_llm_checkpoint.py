"""llm_bridge checkpoints: strict loading, config parsing and refusals, save round trip, tokenizer."""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import llm_bridge
from llm_cases import build, case, rel_err, tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _logits(model, x):
    f, params = llm_bridge.pure(model)
    return np.asarray(jax.jit(f)(params, jnp.asarray(x)))


def _hf_logits(hf, x):
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(x), dtype=torch.long)).logits.numpy()


# --- save -> transformers.from_pretrained -> same logits ---------------------------------

@pytest.mark.parametrize("name, shard", [("gpt2-untied-sharded", None), ("neox-pythia", 10_000),
                                         ("llama-gqa4-bias-head6", None), ("qwen2-gqa2-tied", 10_000)])
def test_save_round_trip_opens_in_transformers(name, shard, tmp_path):
    model = nnx.clone(case(name).ours)
    # Move every parameter so the saved weights can only have come from this model.
    nnx.update(model, jax.tree.map(lambda p: 1.01 * p + 0.003, nnx.state(model, nnx.Param)))
    llm_bridge.save(tmp_path, model, max_shard_size=shard)
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard is not None)

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    x = tokens(6, 2, 12)
    assert rel_err(_logits(model, x), _hf_logits(hf.eval(), x)) <= 1e-4

    again = llm_bridge.load(tmp_path)
    assert again.config == model.config
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), nnx.state(again, nnx.Param),
                        nnx.state(model, nnx.Param))
    assert all(jax.tree.leaves(same))


def test_bfloat16_checkpoint_is_upcast_exactly(tmp_path):
    hf = build("llama-mha-tied").to(torch.bfloat16)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = llm_bridge.load(tmp_path)
    assert model.embed_tokens.embedding.dtype == jnp.float32
    ref = hf.float().state_dict()
    for key, value in llm_bridge.to_hf_weights(model).items():
        np.testing.assert_array_equal(np.asarray(value), ref[key].numpy(), err_msg=key)


# --- strict loading: every key used, every parameter filled, shapes checked --------------

@pytest.fixture
def llama_folder(tmp_path):
    """A copy of the tied Llama case's checkpoint that a test may edit; returns (folder, tensors)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(case("llama-mha-tied").folder, folder)
    return folder, load_file(folder / "model.safetensors")


def _rewrite(folder, tensors):
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(llama_folder):
    folder, tensors = llama_folder
    del tensors["model.layers.1.mlp.up_proj.weight"]
    _rewrite(folder, tensors)
    with pytest.raises(KeyError, match=re.escape("model.layers.1.mlp.up_proj.weight")):
        llm_bridge.load(folder)


def test_unused_tensor_is_named(llama_folder):
    folder, tensors = llama_folder
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
    _rewrite(folder, tensors)
    with pytest.raises(ValueError, match=re.escape("model.layers.0.self_attn.q_norm.weight")):
        llm_bridge.load(folder)


def test_wrong_shape_is_named(llama_folder):
    folder, tensors = llama_folder
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    _rewrite(folder, tensors)
    with pytest.raises(ValueError, match=re.escape("model.layers.0.self_attn.k_proj.weight")):
        llm_bridge.load(folder)


def test_old_buffers_and_equal_tied_head_are_accepted(llama_folder):
    folder, tensors = llama_folder
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    _rewrite(folder, tensors)
    x = tokens(7, 1, 8)
    np.testing.assert_array_equal(_logits(llm_bridge.load(folder), x), _logits(case("llama-mha-tied").ours, x))


def test_tied_head_that_differs_is_refused(llama_folder):
    folder, tensors = llama_folder
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    _rewrite(folder, tensors)
    with pytest.raises(ValueError, match="lm_head.weight"):
        llm_bridge.load(folder)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    shutil.copy(case("llama-mha-tied").folder / "config.json", tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickled"):
        llm_bridge.load(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError):
        llm_bridge.load(tmp_path)


def test_headless_gpt2_checkpoint_with_mask_buffers_loads(tmp_path):
    """The original ``gpt2`` upload: keys without ``transformer.``, plus ``h.{i}.attn.bias`` masks."""
    src = case("gpt2-tied-head9")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(src.folder / "model.safetensors").items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src.folder / "config.json", tmp_path)
    x = tokens(8, 1, 8)
    np.testing.assert_array_equal(_logits(llm_bridge.load(tmp_path), x), _logits(src.ours, x))


def test_neox_head_saved_as_lm_head_loads(tmp_path):
    src = case("neox-pythia")
    tensors = load_file(src.folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors.pop("embed_out.weight")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src.folder / "config.json", tmp_path)
    x = tokens(9, 1, 8)
    np.testing.assert_array_equal(_logits(llm_bridge.load(tmp_path), x), _logits(src.ours, x))


# --- configs: both transformers spellings, real checkpoints' shapes, refusals -------------

# config.json of the checkpoints the bridge targets (as published on the hub, trimmed of
# fields that do not affect the computation).
REAL_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "activation_function": "gelu_new", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
             "n_layer": 12, "n_positions": 1024, "layer_norm_epsilon": 1e-05, "vocab_size": 50257},
    "pythia-70m": {"model_type": "gpt_neox", "hidden_act": "gelu", "hidden_size": 512, "intermediate_size": 2048,
                   "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "num_attention_heads": 8,
                   "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25,
                   "tie_word_embeddings": False, "use_parallel_residual": True, "vocab_size": 50304},
    "Qwen2.5-0.5B": {"model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
                     "max_position_embeddings": 32768, "max_window_layers": 24, "num_attention_heads": 14,
                     "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
                     "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
                     "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936},
    "SmolLM2-135M": {"model_type": "llama", "attention_bias": False, "hidden_act": "silu", "hidden_size": 576,
                     "intermediate_size": 1536, "max_position_embeddings": 8192, "num_attention_heads": 9,
                     "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
                     "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
                     "rope_theta": 100000, "tie_word_embeddings": True, "vocab_size": 49152},
    "TinyLlama-1.1B": {"model_type": "llama", "attention_bias": False, "hidden_act": "silu", "hidden_size": 2048,
                       "intermediate_size": 5632, "max_position_embeddings": 2048, "num_attention_heads": 32,
                       "num_hidden_layers": 22, "num_key_value_heads": 4, "pretraining_tp": 1,
                       "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
                       "tie_word_embeddings": False, "vocab_size": 32000},
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_real_checkpoint_configs_map_every_tensor(name):
    """Our key -> shape table equals the state dict transformers builds for the same config.json."""
    raw = REAL_CONFIGS[name]
    config = llm_bridge.config_from_hf(raw)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**raw))
    ref = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    if raw["model_type"] == "gpt_neox" and "lm_head.weight" in ref:  # transformers >= 5 module name
        ref["embed_out.weight"] = ref.pop("lm_head.weight")
    if config.tie_word_embeddings:
        ref.pop("lm_head.weight", None)
    assert llm_bridge.hf_shapes(config) == ref


def test_both_transformers_spellings_give_the_same_config():
    old = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "rope_theta": 5e5,
           "rope_scaling": None}
    new = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
           "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert llm_bridge.config_from_hf(old) == llm_bridge.config_from_hf(new)
    old = {"model_type": "gpt_neox", "hidden_size": 32, "num_attention_heads": 4, "rotary_pct": 0.5,
           "rotary_emb_base": 123.0}
    new = {"model_type": "gpt_neox", "hidden_size": 32, "num_attention_heads": 4,
           "rope_parameters": {"rope_type": "default", "rope_theta": 123.0, "partial_rotary_factor": 0.5}}
    assert llm_bridge.config_from_hf(old) == llm_bridge.config_from_hf(new)
    assert llm_bridge.config_from_hf(old).rotary_dim == 4


LLAMA = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4}


@pytest.mark.parametrize("raw, match", [
    (LLAMA | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
    (LLAMA | {"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
    (LLAMA | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "yarn"),
    (LLAMA | {"rope_interleaved": True}, "rope_interleaved"),
    (LLAMA | {"hidden_act": "gelu"}, "silu"),
    (LLAMA | {"num_key_value_heads": 3}, "multiple"),
    (LLAMA | {"model_type": "qwen2", "use_sliding_window": True}, "sliding"),
    (LLAMA | {"model_type": "qwen2", "use_mrope": True}, "use_mrope"),
    (LLAMA | {"model_type": "mistral"}, "mistral"),
    ({"model_type": "gpt2", "add_cross_attention": True}, "cross"),
    ({"model_type": "gpt2", "activation_function": "swish"}, "swish"),
    ({"model_type": "gpt_neox", "hidden_size": 40, "num_attention_heads": 4, "rotary_pct": 0.5}, "even"),
    ({"model_type": "gpt_neox", "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
])
def test_unsupported_configs_are_refused(raw, match):
    with pytest.raises(ValueError, match=match):
        llm_bridge.config_from_hf(raw)


def test_saved_config_keeps_unread_fields_and_reloads_equal(tmp_path):
    model = case("qwen2-gqa3-head10-sharded").ours
    llm_bridge.save(tmp_path, model)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["torch_dtype"] == "float32" and written["architectures"] == ["Qwen2ForCausalLM"]
    assert written["max_window_layers"] == model.config.extra["max_window_layers"]
    assert llm_bridge.config_from_hf(written) == model.config


# --- tokenizer ---------------------------------------------------------------------------

def test_tokenizer_json_round_trip(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat", "owls like the night", "numbers: 123 456 789"] * 20,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))

    loaded = llm_bridge.load_tokenizer(tmp_path)
    text = "the owls sat on 456"
    ids = loaded.encode(text).ids
    assert loaded.decode(ids) == text and max(ids) < loaded.get_vocab_size()

    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        llm_bridge.load_tokenizer(tmp_path)


# --- bad input: one clear line naming the file (issue 14) -------------------------------------

def test_truncated_or_corrupt_safetensors_is_named(llama_folder):
    folder, _ = llama_folder
    path = folder / "model.safetensors"
    data = path.read_bytes()
    for bad in (data[: len(data) // 2], b"garbage" * 20, data[:4]):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not a valid safetensors file") as e:
            llm_bridge.load(folder)
        assert "\n" not in str(e.value) and e.value.__cause__ is None


def test_unreadable_file_is_not_called_corrupt(llama_folder, monkeypatch):
    folder, _ = llama_folder

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(llm_bridge.loading.hf, "safe_open", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        llm_bridge.load(folder)


def test_missing_folder_is_reported_as_a_missing_folder(tmp_path):
    for call in (llm_bridge.load, llm_bridge.load_tokenizer, llm_bridge.read_safetensors):
        with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nope'}: no such folder")):
            call(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        llm_bridge.load(tmp_path)


@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "sub/model.safetensors", ".."])
def test_shard_index_entries_outside_the_folder_are_refused(llama_folder, shard):
    folder, _ = llama_folder
    index = {"weight_map": {"model.embed_tokens.weight": "model.safetensors", "model.norm.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file name inside the folder"):
        llm_bridge.load(folder)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.uint8])
def test_integer_and_bool_tensors_are_not_weights(llama_folder, dtype):
    folder, tensors = llama_folder
    tensors["model.norm.weight"] = np.ones(tensors["model.norm.weight"].shape, dtype)
    _rewrite(folder, tensors)
    with pytest.raises(ValueError, match=r"'model.norm.weight' has dtype .*must be floating point"):
        llm_bridge.load(folder)


@pytest.mark.parametrize("raw, key", [
    (LLAMA | {"num_attention_heads": 0}, "num_attention_heads=0"),
    (LLAMA | {"hidden_size": -32}, "hidden_size=-32"),
    (LLAMA | {"num_key_value_heads": 0}, "num_key_value_heads=0"),
    (LLAMA | {"num_hidden_layers": 2.5}, "num_hidden_layers=2.5"),
    ({"model_type": "gpt2", "n_head": 0}, "n_head=0"),
    ({"model_type": "gpt_neox", "num_attention_heads": 0}, "num_attention_heads=0"),
    ({"model_type": "gpt2", "vocab_size": True}, "vocab_size=True"),
])
def test_non_positive_sizes_are_refused(raw, key, tmp_path):
    with pytest.raises(ValueError, match=re.escape(key) + ": must be a positive integer"):
        llm_bridge.config_from_hf(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: config {key}")):
        llm_bridge.load(tmp_path)


@pytest.mark.parametrize("text", ["{not json", '{"model": 1}', "\x00\xff garbage", "[]"])
def test_garbage_tokenizer_json_is_named(tmp_path, text):
    (tmp_path / "tokenizer.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer.json")) + ": not a valid") as e:
        llm_bridge.load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)
