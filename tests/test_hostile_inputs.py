"""Hostile and careless inputs (issue 23): every case of the campaign, as a regression suite.

Each case is an input (a chat template, a GGUF file, a config.json, a checkpoint folder, an MNIST
folder, a results file, a command line) and what must happen: a result, or one error line naming
the file or flag, within a bounded time and memory. The cases run in ONE child python
(tests/hostile_cases.py) whose address space is capped (``RLIMIT_AS``: what it uses after its
imports plus 2 GiB) and whose every case has a timer, so a regression (a 10 GB allocation, a FIFO
that blocks) fails its test instead of the machine; the tests here only judge the outcomes. The
hypothesis properties (tests/hostile_fuzz.py: templates built from the dangerous filters and
methods, GGUF files with drawn metadata and edited headers) run in a second capped child, with a
fifth of their examples in the default tier and all under ``HYPOTHESIS_PROFILE=full``.

docs/testing.md lists what the suite covers (each kind of input, its bound, the test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from strategies import examples

from llm_bridge.loading import sandbox

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE_SECONDS = 0.5  # the sandbox's deadline in the child (sandbox.MAX_SECONDS is 2 s in use)
SLACK = 10.0  # seconds on top of a bound: the test machine is shared and slow


@dataclasses.dataclass
class Case:
    """``make(scratch folder) -> the child's case dict``; ``expect``: a regex the error must match (None:
    must succeed); ``names``: the text the error must contain (the file or flag; default the case's
    ``path`` / ``source``); ``seconds``: the bound on the case's time."""

    id: str
    make: Callable[[Path], dict]
    expect: str | None
    seconds: float = 5.0
    names: str | None = None


# ------------------------------------------------------------------------------ chat templates

def _template(text, **kw):
    return lambda d: {"kind": "template", "text": text, "source": str(d / "chat_template.jinja"),
                      "max_seconds": TEMPLATE_SECONDS, **kw}


BIG = "builds a value larger than"
TEMPLATES = [
    # the failures: 10 GB, 17.7 GB, 1.8 GB, a 60 s render, a 2995-line RecursionError
    ("center", "{{ 'a'|center(10**10) }}", BIG),
    ("ljust", "{{ 'a'.ljust(10**10) }}", BIG),
    ("rjust", "{{ 'a'.rjust(10**10) }}", BIG),
    ("zfill", "{{ 'a'.zfill(10**10) }}", BIG),
    ("center-method", "{{ 'a'.center(10**10) }}", BIG),
    ("expandtabs", "{{ '\\t'.expandtabs(10**10) }}", BIG),
    ("format-filter-width", "{{ '%10000000000s'|format('a') }}", BIG),
    ("percent-width", "{{ '%10000000000s' % 'a' }}", BIG),
    ("percent-precision", "{{ '%.10000000000f' % 1.5 }}", BIG),
    ("percent-star", "{{ '%*s' % (10**10, 'a') }}", BIG),
    ("percent-many", "{{ ('%s' * 1000) % (('x' * 1000,) * 1000) }}", BIG),
    ("str-format-width", "{{ '{:10000000000}'.format('a') }}", BIG),
    ("str-format-nested-width", "{{ '{:{w}}'.format('a', w=10**10) }}", BIG),
    ("str-format-repeat", "{{ '{0}{0}{0}{0}'.format('x' * 400000) }}", BIG),
    ("concat-doubling", "{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s|length }}", BIG),
    ("plus-doubling", "{% set ns = namespace(s='a') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s|length }}", BIG),
    ("list-doubling", "{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s|length }}", BIG),
    ("literal-doubling", "{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = [ns.s, ns.s] %}"
                         "{% endfor %}{{ ns.s|length }}", BIG),
    ("shared-references", "{% set a = ['x' * 100000] * 10 %}{% set b = [a] * 10 %}{{ b }}", BIG),
    ("list-growth-loop", "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + [i] %}"
                         "{% endfor %}{{ ns.l|length }}", "ran longer than|" + BIG),
    ("repeat-str", "{{ 'a' * 10**10 }}", BIG),
    ("repeat-list", "{{ [1] * 10**8 }}", BIG),
    ("join-filter", "{{ range(100000)|join('y' * 100) }}", BIG),
    ("join-method", "{{ ('y' * 1000).join(['a'] * 5000) }}", BIG),
    ("join-attribute", "{{ [{'a': 'x' * 600000}, {'a': 'x' * 600000}]|join(attribute='a') }}", BIG),
    ("replace-filter", "{{ ('a' * 1000)|replace('a', 'b' * 10000) }}", BIG),
    ("replace-method", "{{ ('a' * 1000).replace('a', 'b' * 10000) }}", BIG),
    ("replace-empty", "{{ ('a' * 2000).replace('', 'b' * 1000) }}", BIG),
    ("translate", "{{ ('x' * 100).translate({120: 'y' * 100000}) }}", BIG),
    ("indent", "{{ ('a\\n' * 1000)|indent(10**6) }}", BIG),
    ("wordwrap", "{{ 'a b c d e'|wordwrap(1, wrapstring='x' * 10**6) }}", BIG),
    ("batch", "{{ range(10)|batch(10**10, 'x')|list }}", BIG),
    ("slice", "{{ range(10)|slice(10**10)|list }}", BIG),
    ("tojson-indent", "{{ [[1]]|tojson(indent=10**9) }}", BIG),
    ("tojson-separators", "{{ range(1000)|list|tojson(separators=('x' * 10000, ':')) }}", BIG),
    ("pprint", "{{ (['x' * 100000] * 9)|pprint }}", BIG),
    ("sum-lists", "{{ ([[1] * 1000] * 999)|sum(start=[])|length }}", BIG),
    ("dict-call", "{{ dict(a='x' * 900000, b='x' * 900000) }}", BIG),
    ("namespace-call", "{{ namespace(a='x' * 600000, b='x' * 600000) }}", BIG),
    ("lipsum", "{{ lipsum(10**6) }}", BIG),
    ("strftime", "{{ strftime_now('%c' * 200000) }}", BIG),
    ("urlize", "{{ ('http://a.b ' * 30000)|urlize(target='t' * 1000) }}", BIG),
    ("int-power", "{{ 3 ** 1000000 }}", "computes a number too large"),
    ("int-times", "{{ (10 ** 30000) * (10 ** 30000) * (10 ** 30000) * (10 ** 30000) }}", "computes a number too large"),
    ("round-precision", "{{ 1.5|round(10**9, 'floor') }}", "rounds to"),
    ("set-block-loop", "{% set x %}{% for i in range(100000) %}{{ 'y' * 999999 }}{% endfor %}{% endset %}"
                       "{{ x|length }}", "output exceeds"),
    ("macro-loop", "{% macro m() %}{% for i in range(100000) %}{{ 'y' * 999999 }}{% endfor %}{% endmacro %}"
                   "{{ m()|length }}", "output exceeds"),
    ("output-loop", "{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}", "output exceeds"),
    ("namespace-cycle", "{% set ns = namespace() %}{% set ns.a = ns %}{{ ns }}", BIG),
    ("nested-loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "ran longer than"),
    ("map-filter-loop", "{% for i in range(100) %}{{ range(100000)|map('string')|join|length }}{% endfor %}",
     "ran longer than"),
    ("parentheses-100k", "{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}", "nests brackets or blocks"),
    ("brackets-100k", "{{ " + "[" * 100_000 + "1" + "]" * 100_000 + " }}", "nests brackets or blocks"),
    ("if-blocks-5k", "{% if 1 %}" * 5000 + "x" + "{% endif %}" * 5000, "nests brackets or blocks"),
    ("too-long", "x" * 1_000_001, "characters long"),
    ("macro-recursion", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion"),
    ("range-too-big", "{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    # held in the campaign: sandbox escapes and mutations
    ("escape-mro", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe|SecurityError|access to attribute"),
    ("escape-globals", "{{ cycler.__init__.__globals__ }}", "unsafe|SecurityError|access to attribute"),
    ("mutate-list", "{{ messages.append(1) }}", "unsafe|SecurityError|access to attribute"),
    ("include", "{% include '/etc/passwd' %}", "TemplateNotFound|no loader|failed"),
    ("undefined", "{{ messages[0].nope.deeper }}", "UndefinedError"),
    ("division", "{{ 1 // 0 }}", "ZeroDivisionError"),
    # bounded, not refused: what real templates do still works
    ("ok-center", "{{ messages[0].content|center(80) }}", None),
    ("ok-format", "{{ '%5s|%-4d|%.3f'|format('a', 7, 1.5) }} {{ '{:>8}'.format('b') }}", None),
    ("ok-tojson", "{{ {'tools': [{'name': 'f', 'args': [1, 2]}]}|tojson(indent=2) }}", None),
    ("ok-loop-join", "{% for m in messages %}{{ m.role ~ ': ' ~ m.content }}{% endfor %}{{ range(5)|join(',') }}",
     None),
    ("ok-big-but-allowed", "{{ ('x' * 900000)|length }} {{ (['a'] * 100000)|join|length }}", None),
]
# a template that must be refused runs under a short deadline (so one that runs too long is caught fast); one
# that must render runs under the deadline in use, so a loaded machine does not fail it
TEMPLATE_CASES = [Case(f"template-{name}", _template(text, **({} if expect else {"max_seconds": sandbox.MAX_SECONDS})), expect,
                       seconds=TEMPLATE_SECONDS + 5) for name, text, expect in TEMPLATES]


# ------------------------------------------------------------------------------ GGUF headers

def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, kind: str, value) -> bytes:
    codes = {"u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "u64": (10, "<Q"), "bool": (7, "<?")}
    if kind == "str":
        return _s(key) + struct.pack("<I", 8) + _s(value)
    if kind == "strs":
        return _s(key) + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_s(v) for v in value)
    code, fmt = codes[kind]
    return _s(key) + struct.pack("<I", code) + struct.pack(fmt, value)


def _gguf(kvs, tensors: int = 0, tail: bytes = b"", version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs)) + b"".join(kvs) + tail


LLAMA = [_kv("general.architecture", "str", "llama"), _kv("llama.embedding_length", "u32", 64),
         _kv("llama.feed_forward_length", "u32", 96), _kv("llama.attention.head_count", "u32", 4)]


def _gguf_case(name, kind, make_bytes, expect, seconds=5.0):
    def make(d):
        path = d / f"{name}.gguf"
        path.write_bytes(make_bytes())
        return {"kind": kind, "path": str(path)}
    return Case(f"gguf-{name}", make, expect, seconds)


def _written(name, kind, expect, overrides=None, edit=None):
    """A GGUF file written by GGUFWriter (tests/hostile_fuzz.py's 1-layer Llama), its metadata overridden."""
    def make(d):
        sys.path.insert(0, str(HERE))
        import hostile_fuzz

        path = hostile_fuzz.write_gguf(d / f"{name}.gguf", overrides)
        if edit is not None:
            path.write_bytes(edit(path.read_bytes()))
        return {"kind": kind, "path": str(path)}
    return Case(f"gguf-{name}", make, expect, 20.0)


def _flip_tensor_count(data: bytes) -> bytes:
    return data[:8] + struct.pack("<Q", 2**63) + data[16:]


GGUF_CASES = [
    # the failures: 6.8 GB at 60 s, 108 s and 4.3 GB
    _gguf_case("block-count-1e9", "load", lambda: _gguf(LLAMA + [_kv("llama.block_count", "u32", 10**9)])
               + b"\0" * 20_000, "block_count: config num_hidden_layers=1000000000: at most 1,024"),
    _gguf_case("string-array-3m", "load", lambda: _gguf(
        LLAMA + [_kv("llama.block_count", "u32", 2), _kv("tokenizer.ggml.tokens", "strs", ["abcdefgh"] * 3_000_000)]),
        "array of 3,000,000 items; at most 1,048,576", seconds=15.0),
    _gguf_case("block-count-1000-no-tensors", "load",
               lambda: _gguf(LLAMA + [_kv("llama.block_count", "u32", 1000)]) + b"\0" * 20_000,
               "the config has 1000 layers .*holds no layer tensors"),
    _gguf_case("heads-exceed-width", "load", lambda: _gguf(
        [_kv("general.architecture", "str", "llama"), _kv("llama.embedding_length", "u32", 4),
         _kv("llama.feed_forward_length", "u32", 8), _kv("llama.attention.head_count", "u32", 8),
         _kv("llama.block_count", "u32", 1)]), "hidden_size=4 is not a multiple of num_attention_heads=8"),
    _gguf_case("eps-string", "load", lambda: _gguf(
        LLAMA + [_kv("llama.block_count", "u32", 2), _kv("llama.attention.layer_norm_rms_epsilon", "str", "abc")]),
        "rms_norm_eps='abc': must be a finite number"),
    _gguf_case("eps-nan", "load", lambda: _gguf(
        LLAMA + [_kv("llama.block_count", "u32", 2), _kv("llama.attention.layer_norm_rms_epsilon", "f32", float("nan"))]),
        "rms_norm_eps=nan: must be a finite number"),
    _gguf_case("head-count-string", "load", lambda: _gguf(
        LLAMA[:3] + [_kv("llama.attention.head_count", "str", "4"), _kv("llama.block_count", "u32", 2)]),
        "num_attention_heads='4': must be a positive integer"),
    _gguf_case("architecture-not-string", "load", lambda: _gguf(
        [_kv("general.architecture", "u32", 7)] + LLAMA[1:] + [_kv("llama.block_count", "u32", 2)]),
        "architecture 7 is not supported"),
    # held in the campaign: counts of 2**40 .. 2**63 against a small file
    _gguf_case("kv-count-2e63", "load", lambda: b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63) + b"\0" * 100,
               "declares 9,223,372,036,854,775,808 metadata keys"),
    _gguf_case("tensor-count-2e40", "load", lambda: b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + b"\0" * 100,
               "declares 1,099,511,627,776 tensors"),
    _gguf_case("array-count-2e40", "load", lambda: _gguf(LLAMA + [_s("x") + struct.pack("<IIQ", 9, 8, 2**40)]),
               "array of 1,099,511,627,776 items"),
    _gguf_case("array-count-fits-limit-not-file", "load",
               lambda: _gguf(LLAMA + [_s("x") + struct.pack("<IIQ", 9, 8, 1_000_000)]),
               "truncated or corrupt.*declares 1,000,000 items"),
    _gguf_case("string-length-2e62", "load",
               lambda: b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"\0" * 100,
               "truncated or corrupt.*string of 4,611,686,018,427,387,904 bytes"),
    _gguf_case("key-not-utf8", "load", lambda: _gguf([struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", 4) + b"\0" * 4]),
               "not UTF-8"),
    _gguf_case("unknown-value-type", "load", lambda: _gguf([_s("k") + struct.pack("<I", 99) + b"\0" * 8]),
               "unknown value type 99"),
    _gguf_case("nested-arrays", "load", lambda: _gguf(
        [_s("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 1) + b"\0" * 4]),
        "nests arrays"),
    _gguf_case("duplicate-key", "load", lambda: _gguf(LLAMA + [LLAMA[1]]), "appears twice"),
    _gguf_case("version-99", "load", lambda: _gguf(LLAMA, version=99), "not a readable GGUF file"),
    _gguf_case("empty", "load", lambda: b"", "not a readable GGUF file"),
    _gguf_case("text", "load", lambda: b"not a model at all\n" * 10, "not a readable GGUF file"),
    _written("tensor-count-lie", "load", "not a readable GGUF file|declares", edit=_flip_tensor_count),
    _written("truncated-tensors", "load", "not a readable GGUF file|runs past the end",
             edit=lambda b: b[:len(b) - 100]),
    _written("alignment-zero", "load", "not a readable GGUF file", {"general.alignment": ("uint32", 0)}),
    _written("alignment-wrong-type", "load", "not a readable GGUF file", {"general.alignment": ("string", "x")}),
    _written("vocab-size-1e9", "load", "vocab_size=1000000000: at most", {"llama.vocab_size": ("uint32", 10**9)}),
    _written("tokens-not-strings", "tokenizer", "tokenizer.ggml.tokens is not a list of strs",
             {"tokenizer.ggml.tokens": ("array", list(range(259)))}),
    _written("merges-not-strings", "tokenizer", "tokenizer.ggml.merges is not a list of strs",
             {"tokenizer.ggml.merges": ("array", [1, 2])}),
    _written("bos-out-of-range", "tokenizer", "bos_token_id=.* is outside the vocabulary",
             {"tokenizer.ggml.bos_token_id": ("uint32", 10**6)}),
    _written("template-center", "chat_template", BIG,
             {"tokenizer.chat_template": ("string", "{{ 'a'|center(10**10) }}")}),
    _written("template-nested", "chat_template", "nests brackets or blocks",
             {"tokenizer.chat_template": ("string", "{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}")}),
    _written("valid", "load", None),
    _written("valid-tokenizer", "tokenizer", None),
    _written("valid-template", "chat_template", None),
]


# ------------------------------------------------------------------------------ configs and checkpoints

SMALL = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
         "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved 1-layer Llama (config.json + model.safetensors)."""
    from flax import nnx

    import llm_bridge

    cfg = llm_bridge.LlamaConfig(**{k: v for k, v in SMALL.items() if k != "model_type"})
    return llm_bridge.save(tmp_path_factory.mktemp("ckpt") / "model", llm_bridge.Llama(cfg, rngs=nnx.Rngs(0)))


def _folder(d: Path, name: str, config) -> Path:
    folder = d / name
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _config_case(name, config, expect):
    """config.json alone (the config is checked before any weights are looked for)."""
    return Case(f"config-{name}", lambda d: {"kind": "load", "path": str(_folder(d, name, config))}, expect)


def _copy(checkpoint: Path, d: Path, name: str) -> Path:
    return Path(shutil.copytree(checkpoint, d / name))


CONFIG_CASES = [
    _config_case("layers-1e9", SMALL | {"num_hidden_layers": 10**9}, "num_hidden_layers=1000000000: at most 1,024"),
    _config_case("heads-exceed-width", SMALL | {"num_attention_heads": 64}, "hidden_size=16 is not a multiple"),
    _config_case("eps-string", SMALL | {"rms_norm_eps": "abc"}, "rms_norm_eps='abc': must be a finite number"),
    _config_case("eps-negative", SMALL | {"rms_norm_eps": -1}, r"rms_norm_eps=-1: must lie in \[0, 1\]"),
    _config_case("vocab-2e40", SMALL | {"vocab_size": 2**40}, "vocab_size=1099511627776: at most"),
    _config_case("width-bool", SMALL | {"hidden_size": True}, "hidden_size=True: must be a positive integer"),
    _config_case("width-float", SMALL | {"hidden_size": 16.5}, "hidden_size=16.5: must be a positive integer"),
    _config_case("tie-string", SMALL | {"tie_word_embeddings": "false"}, "tie_word_embeddings='false': must be true or false"),
    _config_case("model-type-list", SMALL | {"model_type": ["llama"]}, r"model_type \['llama'\] is not supported"),
    _config_case("rope-theta-negative", SMALL | {"rope_theta": -1}, r"rope_theta=-1: must lie in \(0, 1e\+12\]"),
    _config_case("rope-theta-string", SMALL | {"rope_theta": "abc"}, "rope_theta='abc': must be a finite number"),
    _config_case("rope-parameters-string", SMALL | {"rope_parameters": "x"}, "rope_parameters='x': must be an object"),
    _config_case("head-dim-odd", SMALL | {"head_dim": 3}, "head_dim=3 must be even"),
    _config_case("kv-heads-3", SMALL | {"num_key_value_heads": 3, "num_attention_heads": 4}, "not a multiple of num_key_value_heads"),
    _config_case("activation-list", SMALL | {"hidden_act": ["silu"]}, r"hidden_act=\['silu'\]: must be a string"),
    _config_case("gpt2-heads", {"model_type": "gpt2", "n_embd": 8, "n_head": 16}, "n_embd=8 is not a multiple of n_head=16"),
    _config_case("neox-pct", {"model_type": "gpt_neox", "rotary_pct": 2.0}, r"rotary_pct=2.0: must lie in \(0, 1\]"),
    _config_case("nested-100k", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON .nested too deeply"),
    _config_case("json-list", "[1, 2]", "not a JSON object"),
    _config_case("deep-value", json.dumps(SMALL | {"rms_norm_eps": json.loads("[" * 900 + "]" * 900)}),
                 "rms_norm_eps=.*must be a finite number"),
    Case("config-fifo", lambda d: (os.mkfifo((d / "fifo").mkdir() or d / "fifo" / "config.json"),
                                   {"kind": "load", "path": str(d / "fifo")})[1], "not a regular file"),
    Case("config-too-big", lambda d: {"kind": "load", "path": str(_folder(d, "big", json.dumps(
        SMALL | {"pad": "x" * (17 << 20)})))}, "bytes; a config is at most 16 MiB"),
]


def _checkpoint_case(name, edit, expect, kind="load"):
    """A copy of the saved checkpoint, changed by ``edit(folder, scratch)``."""
    def make(d, checkpoint):
        folder = _copy(checkpoint, d, name)
        edit(folder, d)
        return {"kind": kind, "path": str(folder)}
    return Case(f"checkpoint-{name}", make, expect, 15.0)


def _link_outside(folder: Path, d: Path) -> None:
    outside = d / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)


def _shard_outside(folder: Path, d: Path) -> None:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        names = list(f.keys())
    outside = d / "other-folder"
    outside.mkdir()
    (folder / "model.safetensors").rename(outside / "model-00001-of-00001.safetensors")
    (folder / "model-00001-of-00001.safetensors").symlink_to(outside / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}))


def _hub_cache(folder: Path, d: Path) -> None:
    """Lay the checkpoint out as the Hugging Face cache does: snapshots/REV/* are links into ../../blobs/."""
    repo = d / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for p in folder.iterdir():
        p.rename(blobs / f"blob-{p.name}")
        (snapshot / p.name).symlink_to(Path("../../blobs") / f"blob-{p.name}")
    folder.rmdir()
    folder.symlink_to(snapshot)


def _more_layers(n):
    def edit(folder, d):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": n}))
    return edit


CHECKPOINT_CASES = [
    _checkpoint_case("weights-link-outside", _link_outside, "links to .*outside the checkpoint folder"),
    _checkpoint_case("shard-link-outside", _shard_outside, "links to .*outside the checkpoint folder"),
    _checkpoint_case("hub-cache-links", _hub_cache, None),
    _checkpoint_case("index-escapes", lambda f, d: (f / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "../model.safetensors"}})), "is not a file name inside the folder"),
    _checkpoint_case("layers-1000-over-1", _more_layers(1000), "the config has 1000 layers .*holds tensors of 1 layer"),
    _checkpoint_case("safetensors-header-2e60", lambda f, d: (f / "model.safetensors").write_bytes(
        struct.pack("<Q", 2**60) + b"{}"), "not a valid safetensors file"),
    _checkpoint_case("tokenizer-fifo", lambda f, d: os.mkfifo(f / "tokenizer.json"), "not a regular file", "tokenizer"),
    _checkpoint_case("tokenizer-config-nested", lambda f, d: (f / "tokenizer_config.json").write_text(
        '{"chat_template": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nested too deeply", "chat_template"),
    _checkpoint_case("template-link-outside", lambda f, d: ((d / "t.jinja").write_text("{{ 1 }}"),
                                                           (f / "chat_template.jinja").symlink_to(d / "t.jinja")),
                     "links to .*outside the checkpoint folder", "chat_template"),
    _checkpoint_case("template-list-names", lambda f, d: (f / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": ["x"], "template": "y"}]})), "without a 'default' entry", "chat_template"),
]


# ------------------------------------------------------------------------------ MNIST: command line and data

def _mnist_fifo_folder(d: Path, name: str) -> Path:
    """An MNIST folder whose training images are a FIFO (the first file the loader opens)."""
    folder = d / name
    folder.mkdir(parents=True)
    from mnist_aux import data

    for n in data.FILES.values():
        if n == "train-images-idx3-ubyte.gz":
            os.mkfifo(folder / n)
        else:
            (folder / n).write_bytes(b"")
    return folder


def _mnist_cli(name, argv, expect, env=None, early=False, folder=None, seconds=30.0):
    """``python -m mnist_aux ARGV`` (``{d}`` in an argument is the scratch folder); ``folder(d)`` prepares files."""
    def make(d):
        if folder is not None:
            folder(d)
        return {"kind": "mnist_cli", "argv": [a.format(d=d) for a in argv], "cwd": str(d), "early": early,
                "env": {k: v.format(d=d) for k, v in (env or {}).items()}}
    return Case(f"mnist-{name}", make, expect, seconds, names=None)


def _peers_folder(fig10):
    def folder(d):
        (d / "peers").mkdir()
        (d / "peers" / "mnist_aux_fig10.json").write_text(fig10)
    return folder


OUT = ["--out", "{d}/out.json"]
MNIST_CASES = [
    _mnist_cli("seeds-1e20", ["run", "--seeds", "99999999999999999999", *OUT], "--seeds must be <= 10,000"),
    _mnist_cli("first-seed-int32", ["run", "--first-seed", "2147483647", "--seeds", "2", *OUT],
               "runs past seed 2147483647"),
    _mnist_cli("first-seed-huge", ["align", "--first-seed", "99999999999999999999", *OUT], "runs past seed"),
    _mnist_cli("sweep-first-seed", ["sweep", "noise", "--first-seed", "2147483640", *OUT], "runs past seed"),
    _mnist_cli("pairing-seed", ["run", "--pairing-seed", str(2**40), *OUT], "--pairing-seed must be <= 2\\*\\*31-1"),
    _mnist_cli("first-seed-negative", ["run", "--first-seed", "-1", *OUT], "--first-seed must be >= 0"),
    _mnist_cli("mesh-zero", ["run", "--mesh", "data=0", *OUT], "--mesh"),
    _mnist_cli("distributed-no-coordinator", ["run", "--distributed", "--preset", "smoke", *OUT],
               "--distributed: JAX could not start", early=True),
    _mnist_cli("data-fifo", ["run", "--preset", "smoke", "--data-dir", "{d}/fifo", *OUT], "not a regular file",
               folder=lambda d: _mnist_fifo_folder(d, "fifo")),
    _mnist_cli("data-dir-tilde", ["run", "--preset", "smoke", "--data-dir", "~/mnist", *OUT],
               "home/mnist/train-images-idx3-ubyte.gz: not a regular file",
               env={"HOME": "{d}/home"}, folder=lambda d: _mnist_fifo_folder(d, "home/mnist")),
    _mnist_cli("env-dir-tilde", ["run", "--preset", "smoke", *OUT],
               "home/mnist/train-images-idx3-ubyte.gz: not a regular file",
               env={"HOME": "{d}/home", "SUBLIMINAL_MNIST_DIR": "~/mnist"},
               folder=lambda d: _mnist_fifo_folder(d, "home/mnist")),
    _mnist_cli("peers-json-list", ["peers", "--results-dir", "{d}/peers", *OUT],
               "mnist_aux_fig10.json is missing or unreadable: not a results file .a JSON list",
               folder=_peers_folder("[1, 2, 3]")),
    _mnist_cli("peers-broken-json", ["peers", "--results-dir", "{d}/peers", *OUT],
               "mnist_aux_fig10.json is missing or unreadable: not valid JSON", folder=_peers_folder('{"a": [1,')),
    _mnist_cli("peers-nested-json", ["peers", "--results-dir", "{d}/peers", *OUT],
               "not valid JSON .nested too deeply", folder=_peers_folder("[" * 100_000 + "]" * 100_000)),
    Case("mnist-labels-fifo", lambda d: (os.mkfifo(d / "labels.gz"), {"kind": "idx", "path": str(d / "labels.gz")})[1],
         "not a regular file"),
]


# ------------------------------------------------------------------------------ LM command line

def _llm_cli(name, argv, expect, folder=None, seconds=60.0):
    def make(d):
        if folder is not None:
            folder(d)
        return {"kind": "llm_cli", "argv": [a.format(d=d) for a in argv], "cwd": str(d)}
    return Case(f"llm-{name}", make, expect, seconds, names=None)


LLM_CASES = [
    _llm_cli("config-json-list", ["run", "--config", "{d}/c.json", *OUT], "--config .*expected a JSON object",
             folder=lambda d: (d / "c.json").write_text("[1, 2]")),
    _llm_cli("cache-dir-proc", ["run", "--cache-dir", "/proc/x", *OUT], "--cache-dir /proc/x"),
    _llm_cli("cache-dir-file", ["run", "--cache-dir", "{d}/file", *OUT], "--cache-dir .*file",
             folder=lambda d: (d / "file").write_text("")),
    _llm_cli("base-seeds-negative", ["run", "--base-seeds", "-1", "-2", *OUT], "--base-seeds must be in 0"),
    _llm_cli("base-seeds-huge", ["run", "--base-seeds", "0", "99999999999999999999", *OUT], "--base-seeds must be in 0"),
    _llm_cli("gguf-upper-case", ["run", "--model", "{d}/missing/MODEL.GGUF", *OUT], "MODEL.GGUF: no such file"),
    _llm_cli("mesh-zero", ["run", "--mesh", "data=0", *OUT], "--mesh"),
]
# Open (llm_bridge/__main__.py, the lead's): --config nested 100k deep gives a RecursionError traceback.
LLM_OPEN = [_llm_cli("config-json-nested", ["run", "--config", "{d}/c.json", *OUT], "--config .*nested|--config .*recursion",
                     folder=lambda d: (d / "c.json").write_text("[" * 100_000 + "]" * 100_000))]

CASES = TEMPLATE_CASES + GGUF_CASES + CONFIG_CASES + CHECKPOINT_CASES + MNIST_CASES + LLM_CASES + LLM_OPEN
assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------ the child run

def _child(spec: dict, folder: Path, timeout: float) -> dict:
    """Run tests/hostile_cases.py on ``spec``; its outcomes, or a failure naming the case it died in."""
    spec_path, out_path = folder / "spec.json", folder / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(HERE / "hostile_cases.py"), str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=folder)
    except subprocess.TimeoutExpired:
        proc = None
    got = json.loads(out_path.read_text()) if out_path.exists() else {"results": {}, "running": "startup"}
    if proc is None or proc.returncode != 0 or got["running"] is not None:
        got["died"] = (f"the child {'timed out' if proc is None else f'exited {proc.returncode}'} in case "
                       f"{got['running']!r}: {'' if proc is None else proc.stderr[-3000:]}")
    return got


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, checkpoint) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    cases, named = [], {}
    for case in CASES:
        scratch = root / case.id
        scratch.mkdir()
        spec = case.make(scratch, checkpoint) if case.id.startswith("checkpoint-") else case.make(scratch)
        cases.append({"id": case.id, **spec})
        named[case.id] = case.names or spec.get("path") or spec.get("source")
    return _child({"cases": cases}, root, timeout=1500) | {"named": named}


def _judge(case: Case, outcomes: dict) -> None:
    got = outcomes["results"].get(case.id)
    if got is None:
        pytest.fail(outcomes.get("died", f"no outcome for {case.id}"))
    assert got["outcome"] != "timeout", got
    assert got["seconds"] <= case.seconds + SLACK, f"took {got['seconds']:.1f} s (bound {case.seconds} s)"
    if case.expect is None:
        assert got["outcome"] == "ok", got
        assert got.get("code", 0) == 0, got
        return
    if "code" in got:  # a command line: exit status 2 and its message on stderr
        assert got["code"] == 2, got
        err = got["stderr"].strip()
        assert "Traceback" not in err, err
        last = err.splitlines()[-1] if err else ""
        usage = err.startswith("usage:")  # argparse prints its usage line before the error
        assert usage or "\n" not in err, err
        assert re.search(case.expect, last), last
        return
    assert got["outcome"] == "error", got
    message = got["message"]
    # ValueError and its kin (GGUFError, TemplateRefusal), FileNotFoundError, the MNIST loader's DataError
    assert {"ValueError", "FileNotFoundError", "DataError"} & set(got["mro"]), got
    assert "\n" not in message and len(message) < 2000, message[:3000]
    assert re.search(case.expect, message), message
    assert outcomes["named"][case.id] in message, f"the message does not name {outcomes['named'][case.id]}: {message}"


@pytest.mark.parametrize("case", [c for c in CASES if c not in LLM_OPEN], ids=lambda c: c.id)
def test_hostile_input(case, outcomes):
    """One line naming the file or flag, within the case's time, under the child's memory cap (or a result)."""
    _judge(case, outcomes)


@pytest.mark.parametrize("case", LLM_OPEN, ids=lambda c: c.id)
def test_open_hostile_input(case, outcomes):
    _judge(case, outcomes)


# ------------------------------------------------------------------------------ in this process (no risk)

def test_a_word_the_tokenizer_cannot_encode_is_named():
    """The probe's spellings of an animal: a tokenizer that drops the word or spells it only with its
    unknown token gives one line naming the spelling, not an IndexError deep in the probe."""
    from tokenizers import Tokenizer, models

    from llm_bridge.experiment.text import Text

    dropped = Tokenizer(models.BPE({"a": 0, "b": 1}, []))
    unknown = Tokenizer(models.BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>"))
    for tok, why in ((dropped, "no tokens"), (unknown, "only its unknown token")):
        text = Text(tok, None, None, eos_ids=(0,))
        with pytest.raises(ValueError, match=f"(?i)cannot encode the animal word '.*owl.*' \\({why}\\)") as e:
            text.forms("owl")
        assert "\n" not in str(e.value)
    spelled = Tokenizer(models.BPE({c: i for i, c in enumerate(" owlOWLsS")}, []))
    assert Text(spelled, None, None, eos_ids=(0,)).forms("owl")


def test_read_json_callers_recompute_and_results_files_are_never_skipped(tmp_path, capsys):
    """``read_json`` (caches) says "recomputing" and every caller recomputes on None; a results file the
    user made is read with ``read_results``, which names the file and its problem instead."""
    from harness import results

    broken = tmp_path / "x.json"
    broken.write_text('{"a": [1,')
    assert results.read_json(broken) is None and "recomputing" in capsys.readouterr().err
    for text, words in (('{"a": [1,', "not valid JSON"), ("[1]", "a JSON list, not an object"),
                        ("[" * 100_000 + "]" * 100_000, "nested too deeply")):
        broken.write_text(text)
        with pytest.raises(ValueError, match=words) as e:
            results.read_results(broken)
        assert "\n" not in str(e.value) and "x.json" in str(e.value)
    assert results.read_results(tmp_path / "absent.json") is None


def test_seeds_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    """--seeds and --first-seed are refused by the argument check, before data or JAX (the 7 GB run);
    the last seed 2**31-1 itself is accepted."""
    from mnist_aux import __main__ as cli
    from mnist_aux import data

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI read data before refusing its arguments")

    monkeypatch.setattr(data, "load", refuse)
    out = ["--out", str(tmp_path / "out.json")]
    for argv, words in ((["run", "--seeds", "99999999999999999999"], "--seeds must be <= 10,000"),
                        (["copies", "--other-train-images", "x", "--first-seed", "2147483640"], "runs past seed"),
                        (["sweep", "width", "--seeds", "10001"], "--seeds must be <= 10,000")):
        assert cli.main(argv + out) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    with pytest.raises(AssertionError, match="read data"):  # accepted: seeds 2147483646 and 2147483647
        cli.main(["copies", "--other-train-images", "x", "--first-seed", "2147483646", "--seeds", "2"] + out)


# ------------------------------------------------------------------------------ hypothesis, in a capped child

@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    full = os.environ.get("HYPOTHESIS_PROFILE") == "full"
    spec = {"fuzz": {"tests": ["templates", "gguf_files"], "folder": str(root / "files"),
                     "examples": {"templates": examples(200), "gguf_files": examples(60)},
                     "derandomize": True}}
    return _child(spec, root, timeout=3000 if full else 900)


@pytest.mark.property
@pytest.mark.parametrize("name", ["templates", "gguf_files"])
def test_fuzzed_inputs_end_in_a_result_or_one_line(name, fuzz):
    """tests/hostile_fuzz.py's properties: every drawn chat template (dangerous filters, methods and
    operators with huge arguments) and GGUF file (drawn metadata, edited and cut headers) ends within
    a bounded time under a 2 GiB cap, with a result or one typed error line naming the file."""
    got = fuzz["results"].get("fuzz", {}).get(name)
    if got is None:
        pytest.fail(fuzz.get("died", "no outcome"))
    assert got["outcome"] == "ok", got["message"]
