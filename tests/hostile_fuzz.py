"""Hypothesis property tests of hostile inputs, run by tests/hostile_cases.py in a memory-capped child.

Two properties, each ``f(examples, derandomize, folder)``:

:func:`templates`  chat templates built from the dangerous filters, methods and operators (center,
                   ljust, rjust, zfill, expandtabs, ``%`` and ``format`` widths, ``str.format``
                   widths, ``*``, ``+``, ``~``, literals, join, replace, indent, wordwrap, batch,
                   slice, tojson, lipsum, ``**``, sum, round, pprint, loops that double a value,
                   deep bracket nesting) with small and huge arguments;
:func:`gguf_files` GGUF files written with the gguf package's ``GGUFWriter`` (a 1-layer Llama with
                   a tokenizer and a chat template), their metadata values replaced by drawn ones
                   (ints from -2**63 to 2**64-1, floats with NaN and infinities, strings, bools,
                   lists, templates of the first strategy) and their header bytes edited or cut.

Each example must end within a bounded time (the child's memory cap bounds memory) with a result
or with one ``ValueError`` (``GGUFError``, ``FileNotFoundError`` for a missing file) whose message is
one line naming the file.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

USER = [{"role": "user", "content": "What is your favourite animal?"}]
SOURCE = Path("fuzz/chat_template.jinja")

# --------------------------------------------------------------------------------- templates

BIG = st.sampled_from([10**k for k in (3, 5, 6, 7, 9, 10, 12, 18)] + [2**31 - 1, 2**32, 2**63, -(10**9)])
NUM = st.one_of(st.integers(-3, 12), BIG)
LEAF = st.one_of(st.sampled_from(["'a'", "'ab\\n'", "'\\t'", "'%s'", "'{0}{0}'", "messages[0].content",
                                  "'x' * 1000", "[1, 2]", "range(5)|list", "{'k': 'v'}"]), NUM.map(str))


def _ops(inner):
    one = st.tuples(inner, NUM)
    two = st.tuples(inner, inner)
    return st.one_of(
        one.map(lambda t: f"({t[0]})|center({t[1]})"),
        st.tuples(inner, st.sampled_from(["ljust", "rjust", "zfill", "center", "expandtabs"]), NUM).map(
            lambda t: f"({t[0]}|string).{t[1]}({t[2]})"),
        one.map(lambda t: f"'%{t[1]}s'|format({t[0]})"),
        one.map(lambda t: f"'%.{abs(t[1])}f' % 1.5 ~ ({t[0]})"),
        one.map(lambda t: f"'%*s' % ({t[1]}, {t[0]})"),
        one.map(lambda t: "'{:" + str(t[1]) + "}'.format(" + t[0] + ")"),
        one.map(lambda t: "'{0:{1}}'.format(" + t[0] + ", " + str(t[1]) + ")"),
        one.map(lambda t: f"({t[0]}) * {t[1]}"),
        two.map(lambda t: f"({t[0]}) ~ ({t[1]})"),
        two.map(lambda t: f"({t[0]}) + ({t[1]})"),
        two.map(lambda t: f"[{t[0]}, {t[1]}]"),
        two.map(lambda t: f"({t[0]})|join({t[1]}|string)"),
        st.tuples(inner, inner, NUM).map(lambda t: f"({t[0]}|string)|replace('a', {t[1]}|string, {t[2]})"),
        two.map(lambda t: f"({t[0]}|string).replace('', {t[1]}|string)"),
        one.map(lambda t: f"({t[0]}|string)|indent({t[1]})"),
        one.map(lambda t: f"({t[0]}|string)|wordwrap({t[1]}, wrapstring='--')"),
        one.map(lambda t: f"(range(5)|list)|batch({t[1]}, {t[0]})|list"),
        one.map(lambda t: f"(range(5)|list)|slice({t[1]})|list"),
        one.map(lambda t: f"[{t[0]}]|tojson(indent={t[1]})"),
        NUM.map(lambda n: f"lipsum({n})"),
        one.map(lambda t: f"({t[0]}) ** {t[1]}"),
        inner.map(lambda e: f"[{e}]|sum(start=[])"),
        one.map(lambda t: f"({t[0]})|round({t[1]})"),
        inner.map(lambda e: f"({e})|pprint"),
        inner.map(lambda e: f"({e})|list"),
        inner.map(lambda e: f"dict(a={e}, b={e})"),
    )


EXPR = st.recursive(LEAF, _ops, max_leaves=6)
TEMPLATE = st.one_of(
    EXPR.map(lambda e: "{{ " + e + " }}"),
    st.tuples(EXPR, st.integers(0, 40), st.sampled_from(["~", "+"])).map(
        lambda t: "{% set ns = namespace(s=" + t[0] + ") %}{% for i in range(" + str(t[1]) + ") %}"
                  "{% set ns.s = ns.s " + t[2] + " ns.s %}{% endfor %}{{ ns.s|length }}"),
    st.tuples(EXPR, st.integers(0, 40)).map(
        lambda t: "{% set ns = namespace(s=" + t[0] + ") %}{% for i in range(" + str(t[1]) + ") %}"
                  "{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s }}"),
    st.tuples(EXPR, NUM).map(lambda t: "{% for i in range(" + str(t[1]) + ") %}{{ " + t[0] + " }}{% endfor %}"),
    st.tuples(EXPR, NUM).map(lambda t: "{% macro m() %}{% for i in range(" + str(t[1]) + ") %}{{ " + t[0]
                                       + " }}{% endfor %}{% endmacro %}{{ m()|length }}"),
    st.tuples(st.integers(1, 200_000), st.sampled_from(["(", "[", "{% if 1 %}"])).map(
        lambda t: ("{{ " + t[1] * t[0] + "1" + {"(": ")", "[": "]"}[t[1]] * t[0] + " }}") if t[1] != "{% if 1 %}"
        else t[1] * t[0] + "x" + "{% endif %}" * t[0]),
)


def one_line(err: BaseException, source) -> None:
    """The error is a ValueError (GGUFError, TemplateRefusal ...) or FileNotFoundError, one line naming ``source``."""
    message = str(err)
    assert isinstance(err, (ValueError, FileNotFoundError)), f"{type(err).__name__}: {message[:500]}"
    assert "\n" not in message and len(message) < 2000, message[:2000]
    assert str(source) in message, message


def _settings(examples: int, derandomize: bool):
    return settings(max_examples=examples, derandomize=derandomize, database=None, deadline=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def templates(examples: int, derandomize: bool, folder: Path) -> None:
    """Every drawn template compiles and renders, or fails with one line, within the deadline's bound."""
    from llm_bridge.loading import chat, sandbox

    sandbox.MAX_SECONDS = 0.5  # the bound under test; keeps examples that run into it short

    @_settings(examples, derandomize)
    @given(TEMPLATE)
    def check(text):
        start = time.monotonic()
        try:
            out = chat.compile_template(text, SOURCE, {}).render(USER)
            assert len(out) <= sandbox.MAX_OUTPUT_CHARS
        except (ValueError, FileNotFoundError) as err:
            one_line(err, SOURCE)
        # compile and render each have the deadline; one builtin step past it is bounded by the size limits
        assert time.monotonic() - start < 2 * sandbox.MAX_SECONDS + 10

    check()


# --------------------------------------------------------------------------------- GGUF files

def _alphabet() -> list[str]:
    """GPT-2's byte alphabet: 256 printable characters, one per byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


TOKENS = [*_alphabet(), "ab", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
BASE_META = {  # key -> (GGUF type, value): a 1-layer Llama, width 8, 2 heads of 4, 1 key/value head
    "llama.block_count": ("uint32", 1), "llama.context_length": ("uint32", 64),
    "llama.embedding_length": ("uint32", 8), "llama.feed_forward_length": ("uint32", 16),
    "llama.attention.head_count": ("uint32", 2), "llama.attention.head_count_kv": ("uint32", 1),
    "llama.rope.freq_base": ("float32", 10000.0), "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
    "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", "default"),
    "tokenizer.ggml.tokens": ("array", TOKENS), "tokenizer.ggml.token_type": ("array", [1] * 257 + [3, 3]),
    "tokenizer.ggml.merges": ("array", ["a b"]), "tokenizer.ggml.bos_token_id": ("uint32", 257),
    "tokenizer.ggml.eos_token_id": ("uint32", 258), "tokenizer.chat_template": ("string", CHATML),
}
KEYS = [*BASE_META, "general.architecture", "general.alignment", "llama.vocab_size", "llama.attention.key_length",
        "llama.rope.dimension_count", "llama.expert_count", "llama.rope.scaling.type"]


def tensors(width=8, ff=16, vocab=len(TOKENS), kv=4):
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, width), "output_norm.weight": (width,),
              "blk.0.attn_norm.weight": (width,), "blk.0.attn_q.weight": (width, width),
              "blk.0.attn_k.weight": (kv, width), "blk.0.attn_v.weight": (kv, width),
              "blk.0.attn_output.weight": (width, width), "blk.0.ffn_norm.weight": (width,),
              "blk.0.ffn_gate.weight": (ff, width), "blk.0.ffn_up.weight": (ff, width),
              "blk.0.ffn_down.weight": (width, ff)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_gguf(path: Path, overrides: dict | None = None) -> Path:
    """The base model as a GGUF file at ``path``, with ``overrides`` ``{key: (GGUF type, value)}``."""
    import gguf

    logging.getLogger("gguf").setLevel(logging.ERROR)  # overriding a key logs a warning
    writer = gguf.GGUFWriter(str(path), "llama")
    add = {"uint32": writer.add_uint32, "int32": writer.add_int32, "uint64": writer.add_uint64,
           "int64": writer.add_int64, "float32": writer.add_float32, "float64": writer.add_float64,
           "bool": writer.add_bool, "string": writer.add_string, "array": writer.add_array}
    for key, (kind, value) in {**BASE_META, **(overrides or {})}.items():
        add[kind](key, value)
    for name, w in tensors().items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


INT = st.one_of(st.integers(0, 2**32 - 1).map(lambda v: ("uint32", v)),
                st.integers(-(2**31), 2**31 - 1).map(lambda v: ("int32", v)),
                st.integers(0, 2**64 - 1).map(lambda v: ("uint64", v)),
                st.sampled_from([0, 1, 2, 3, 7, 64, 1024, 1025, 10**9, 2**40, 2**63]).map(lambda v: ("uint64", v)))
VALUE = st.one_of(
    INT, INT,
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda v: ("float32", v)),
    st.booleans().map(lambda v: ("bool", v)),
    st.text(max_size=20).filter(bool).map(lambda v: ("string", v)),
    st.sampled_from(["llama", "qwen2", "gpt2", "mamba", "gpt_neox", "gpt2", "llama-bpe", "none", "yarn"]).map(
        lambda v: ("string", v)),
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=5).map(lambda v: ("array", v)),
    st.lists(st.text(max_size=5).filter(bool), min_size=1, max_size=5).map(lambda v: ("array", v)),
    TEMPLATE.map(lambda v: ("string", v)),
)
EDITS = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=4)
_names = itertools.count()


def gguf_files(examples: int, derandomize: bool, folder: Path) -> None:
    """Every drawn GGUF file loads (model, tokenizer, chat template rendered) or fails with one line naming
    it, each example within a bounded time."""
    import llm_bridge
    from llm_bridge.loading import sandbox

    sandbox.MAX_SECONDS = 0.5
    folder.mkdir(parents=True, exist_ok=True)

    @_settings(examples, derandomize)
    @given(st.dictionaries(st.sampled_from(KEYS), VALUE, max_size=4), EDITS,
           st.one_of(st.none(), st.none(), st.none(), st.integers(0, 20_000)))  # mostly whole files
    def check(overrides, edits, cut):
        n = next(_names)
        draft = write_gguf(folder / f"draft{n}.gguf", overrides)
        data = bytearray(draft.read_bytes())
        draft.unlink()
        for offset, byte in edits:
            if offset < len(data):
                data[offset] = byte
        path = folder / f"case{n}.gguf"
        path.write_bytes(bytes(data if cut is None else data[:cut]))
        start = time.monotonic()
        for load in (llm_bridge.load, llm_bridge.load_tokenizer, llm_bridge.load_chat_template):
            try:
                got = load(path)
                if load is llm_bridge.load_chat_template and got is not None:
                    got.render(USER)
            except (ValueError, FileNotFoundError) as err:
                one_line(err, path)
        assert time.monotonic() - start < 60
        path.unlink()

    check()
