"""Tiny random transformers models for the llm_bridge parity tests (PyTorch is the reference).

Each case is a small config of one family chosen to exercise one feature: tied and untied
heads, GQA group sizes 1/2/3/4/6, Qwen2 q/k/v biases, Llama attention/MLP biases, head
dims that are not powers of two, partial rotary, sequential NeoX residual, sharded
safetensors. Weights are re-drawn at a scale where logits spread over several units
(transformers' 0.02 init gives near-uniform logits, where greedy decoding would hinge on
rounding) and biases / norm weights are non-trivial, so every tensor's mapping matters.
"""

from __future__ import annotations

import atexit
import functools
import math
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97


def _gpt2(**kw):
    base = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                bos_token_id=0, eos_token_id=None)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**(base | kw)))


def _neox(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=None)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**(base | kw)))


def _llama(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=None)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(base | kw)))


def _qwen2(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=None)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**(base | kw)))


# name -> (builder, save_pretrained max_shard_size or None). Group size G = heads / kv_heads.
CASES = {
    "gpt2-tied-head9": (lambda: _gpt2(n_embd=36, n_head=4), None),  # head dim 9
    "gpt2-untied-sharded": (lambda: _gpt2(tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True), 20_000),
    "neox-pythia": (lambda: _neox(rotary_pct=0.25), None),  # parallel residual, untied, 2 of 8 dims rotate
    "neox-seq-tied-head10": (lambda: _neox(hidden_size=40, rotary_pct=0.4, use_parallel_residual=False,
                                           tie_word_embeddings=True), 20_000),
    "llama-mha-tied": (lambda: _llama(num_key_value_heads=4, tie_word_embeddings=True), None),  # G=1
    "llama-gqa4-bias-head6": (lambda: _llama(num_attention_heads=8, num_key_value_heads=2, head_dim=6,
                                             attention_bias=True, mlp_bias=True, rope_theta=500.0), None),
    "llama-mqa6-sharded": (lambda: _llama(hidden_size=36, num_attention_heads=6, num_key_value_heads=1), 20_000),
    "qwen2-gqa2-tied": (lambda: _qwen2(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6), None),
    "qwen2-gqa3-head10-sharded": (lambda: _qwen2(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                                 head_dim=10, tie_word_embeddings=False), 20_000),
}


def build(name: str, seed: int = 0):
    """The case's transformers model in eval mode, with every parameter randomised."""
    builder, _ = CASES[name]
    torch.manual_seed(seed)
    return randomize(builder().eval(), seed)


def randomize(model, seed: int = 0):
    """Re-draw every parameter of a transformers model in place (see the module docstring); returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in pname or ".ln_" in pname) and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "wte" in pname or "embed" in pname or "wpe" in pname:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # fan-in scaling; torch Linear is [out, in], GPT-2's Conv1D is [in, out]
                fan_in = p.shape[0] if "transformer.h" in pname else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model


def save(model, folder, name: str):
    """``save_pretrained`` as safetensors, sharded when the case says so."""
    _, shard = CASES[name]
    kw = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(folder, safe_serialization=True, **kw)
    return folder


def tokens(seed: int, batch: int, length: int) -> np.ndarray:
    """Random token ids ``[batch, length]`` (int32)."""
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def rel_err(ours, ref) -> float:
    """``max |ours - ref| / max |ref|``: the error relative to the tensor's scale."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


_ROOT = tempfile.TemporaryDirectory(prefix="llm_cases_")
atexit.register(_ROOT.cleanup)


class Case(NamedTuple):
    hf: object  # the transformers model (float32, eval mode)
    folder: Path  # where it was saved with save_pretrained
    ours: object  # llm_bridge.load(folder)


@functools.cache
def case(name: str) -> Case:
    """Build, save and load a case once per test session (several test modules share them)."""
    import llm_bridge

    hf = build(name)
    folder = save(hf, Path(_ROOT.name) / name, name)
    return Case(hf, folder, llm_bridge.load(folder))
