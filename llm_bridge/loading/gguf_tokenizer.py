"""A GGUF file's tokenizer and chat template, from its ``tokenizer.*`` metadata.

The tokenizer is byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``) built with ``tokenizers``
from ``tokenizer.ggml.tokens`` / ``merges`` / ``token_type``, a pre-tokenizer chosen by
``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`) and the special token ids; the chat template
(``tokenizer.chat_template``) is compiled by :mod:`llm_bridge.loading.chat`. The file is read by
:mod:`llm_bridge.loading.gguf` (one parsed reader per file, shared with the model). Anything
unsupported raises :class:`~llm_bridge.loading.gguf.GGUFError` naming the file.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path

from llm_bridge.loading.chat import compile_template
from llm_bridge.loading.gguf import GGUFError, metadata, one_line, read

# tokenizer.ggml.pre -> the split regex applied before byte-level BPE (None: GPT-2's own regex).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str | None, str | None] = {
    None: None, "default": None, "gpt-2": None, "gpt2": None,
    "smollm": r"\p{N}",  # SmolLM's tokenizer.json: each digit is its own pre-token, then GPT-2's regex
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"),
}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)


def _byte_spelling() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (bytes that print stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    spelling, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _tokenizer_meta(path: Path, meta: Mapping) -> tuple[list[str], list[str], list[int]]:
    model = meta.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in meta:
        raise GGUFError(f"{path}: no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    if not isinstance(model, str) or model != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={reprlib.repr(model)} is not supported; only 'gpt2' (byte-level BPE) is")
    if "tokenizer.ggml.merges" not in meta:
        raise GGUFError(f"{path}: no tokenizer metadata tokenizer.ggml.merges (a byte-level BPE needs its merges)")
    tokens, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens) if isinstance(tokens, list) else None
    for key, value, kind in (("tokens", tokens, str), ("merges", merges, str), ("token_type", types, int)):
        if not isinstance(value, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in value):
            raise GGUFError(f"{path}: tokenizer.ggml.{key} is not a list of {kind.__name__}s")
    if not tokens:
        raise GGUFError(f"{path}: tokenizer.ggml.tokens is empty")
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
    return tokens, merges, types


def special_tokens(path: Path, meta: Mapping) -> dict[str, str]:
    """``{"bos_token": "<|im_start|>", ...}``: the named special tokens, for chat templates."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    tokens = tokens if isinstance(tokens, list) else []
    out = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tokens) or not isinstance(tokens[i], str):
                raise GGUFError(f"{path}: tokenizer.ggml.{key}_token_id={i} is outside the vocabulary")
            out[name] = tokens[i]
    return out


def load_tokenizer(source: str | Path):
    """The ``tokenizers.Tokenizer`` of a GGUF file's ``tokenizer.ggml.*`` metadata.

    Byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``): the vocabulary (tokens spelled in
    GPT-2's byte alphabet; any other spelling is re-spelled byte by byte), the merges, a
    split regex chosen by ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`; others refused),
    control tokens (type 3) as special added tokens, user-defined ones (type 4) as added
    tokens, and BOS / EOS prepended / appended when ``add_bos_token`` / ``add_eos_token`` say so.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    path, reader = read(source)
    meta = metadata(reader)
    tokens, merges, types = _tokenizer_meta(path, meta)
    pre = meta.get("tokenizer.ggml.pre")
    if not (pre is None or isinstance(pre, str)) or pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{path}: tokenizer.ggml.pre={reprlib.repr(pre)} is not supported; supported: "
                        f"{sorted(k for k in PRE_TOKENIZERS if k)}")
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    vocab = {}
    for i, token in enumerate(tokens):
        vocab[token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))] = i
    pairs = [tuple(m.split(" ")) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise GGUFError(f"{path}: tokenizer.ggml.merges holds an entry that is not two tokens: "
                        f"{next(m for m, p in zip(merges, pairs) if len(p) != 2)!r}")
    try:
        tok = Tokenizer(models.BPE(vocab, pairs))
    except Exception as err:  # noqa: BLE001 -- tokenizers raises plain Exception on a merge of unknown tokens
        raise GGUFError(f"{path}: the tokenizer metadata does not form a BPE: {one_line(err)}") from None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=PRE_TOKENIZERS[pre] in (None, r"\p{N}"))
    if PRE_TOKENIZERS[pre] is None:
        tok.pre_tokenizer = byte_level
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), "isolated"),
                                                     byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED and t in vocab])
    names = special_tokens(path, meta)
    single, specials = "$A:0", []
    if meta.get("tokenizer.ggml.add_bos_token") and "bos_token" in names:
        single = f"{names['bos_token']}:0 {single}"
        specials.append((names["bos_token"], meta["tokenizer.ggml.bos_token_id"]))
    if meta.get("tokenizer.ggml.add_eos_token") and "eos_token" in names:
        single = f"{single} {names['eos_token']}:0"
        specials.append((names["eos_token"], meta["tokenizer.ggml.eos_token_id"]))
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=sorted(set(specials)))
    return tok


def load_chat_template(source: str | Path):
    """The :class:`llm_bridge.loading.chat.ChatTemplate` of ``tokenizer.chat_template``, or None where the file
    has none."""
    path, reader = read(source)
    meta = metadata(reader)
    text = meta.get("tokenizer.chat_template")
    return None if text is None else compile_template(text, path, special_tokens(path, meta))
