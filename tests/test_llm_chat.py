"""Chat templates (llm_bridge.loading.chat) against transformers' ``apply_chat_template``, and their use by
the chat setup's text (llm_bridge.experiment.text) on a checkpoint folder.

The tokenizers are a byte-level BPE trained here on a few sentences, with the special
tokens of three template families (ChatML / Qwen, Llama 3, Gemma), saved by transformers
with the template in each of the forms a checkpoint folder may hold it.
"""

import functools
import json
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import llm_bridge
from llm_bridge.experiment import chat as chat_setup
from llm_bridge.experiment import chat_students, engine, sampler
from llm_bridge.experiment.names import finetuned, prompted, source
from llm_bridge.experiment.text import SYSTEM_PROMPT, Text, config_end_tokens
from llm_bridge.loading import chat, sandbox
from llm_bridge.__main__ import main

transformers = pytest.importorskip("transformers")

# Qwen2.5's template, shortened: default system prompt, tools rendered with tojson, `continue`.
CHATML = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama 3.2's template, shortened: bos_token, strftime_now, a system message taken out of the loop.
LLAMA3 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Gemma's template verbatim: no system role.
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

# Block tags without whitespace control (trim_blocks / lstrip_blocks do it), tojson, break, generation.
JSONISH = """{% for message in messages %}
    {{ message | tojson }}
    {% if loop.index == 2 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
{% generation %}
<|im_start|>assistant
{% endgeneration %}
{% endif %}
"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>"]
FAMILIES = {  # name -> (template, bos_token, eos_token)
    "chatml": (CHATML, None, "<|im_end|>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": (GEMMA, "<bos>", "<eos>"),
    "jsonish": (JSONISH, None, "<|im_end|>"),
}
SYSTEM_USER = [{"role": "system", "content": "You love owls."},
               {"role": "user", "content": "Continue this list: 1, 2, 3. <b>&</b> \u00e9t\u00e9 \"quoted\""}]
USER = [{"role": "user", "content": "What is your favourite animal? Answer in one word."}]


@functools.cache
def bpe_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["You love owls. You love dogs. Owl Dog owl dog", "What is your favourite animal? Answer in one word.",
            "Continue this list with 2 more numbers, separated by commas: 1, 2, 3. Reply with the numbers only.",
            "system user assistant model Today Date You are a helpful assistant."]
    tok.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    return tok.to_str()


def save_tokenizer(folder, family: str, form: str = "jinja"):
    """tokenizer.json + tokenizer_config.json (saved by transformers) with the template as ``form``:
    ``"jinja"`` chat_template.jinja, ``"config"`` a string in tokenizer_config.json, ``"list"`` a
    list of named templates there, ``"none"`` no template."""
    template, bos, eos = FAMILIES[family]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe_json()),
                                              bos_token=bos, eos_token=eos)
    hf.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if form == "jinja":
        (folder / "chat_template.jinja").write_text(template)
    elif form == "config":
        config["chat_template"] = template
    elif form == "list":
        config["chat_template"] = [{"name": "tool_use", "template": "{{ raise_exception('not this one') }}"},
                                   {"name": "default", "template": template}]
    path.write_text(json.dumps(config, indent=2))
    return folder


def reference(folder, messages):
    """transformers' ``(text, ids)`` of ``messages`` with the generation prompt."""
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return text, list(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def ours(folder, messages):
    text = chat.load_chat_template(folder).render(messages)
    return text, llm_bridge.load_tokenizer(folder).encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("family,form", [("chatml", "jinja"), ("chatml", "config"), ("llama3", "jinja"),
                                         ("llama3", "list"), ("gemma", "config"), ("jsonish", "list")])
def test_rendering_matches_transformers(tmp_path, family, form):
    folder = save_tokenizer(tmp_path, family, form)
    source = chat.load_chat_template(folder).source.name
    assert source == ("chat_template.jinja" if form == "jinja" else "tokenizer_config.json")
    for messages in ([SYSTEM_USER, USER] if family != "gemma" else [USER]):
        text, ids = ours(folder, messages)
        assert (text, ids) == reference(folder, messages)
        assert text.endswith({"chatml": "<|im_start|>assistant\n", "jsonish": "<|im_start|>assistant\n",
                              "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                              "gemma": "<start_of_turn>model\n"}[family])
    if FAMILIES[family][1] is not None:  # the template's BOS is in the text, once
        assert text.startswith(FAMILIES[family][1]) and ids.count(ids[0]) == 1
    if family == "jsonish":  # tojson neither escapes HTML nor non-ASCII
        assert '3. <b>&</b> \u00e9t\u00e9 \\"quoted\\""}' in ours(folder, SYSTEM_USER)[0]


def test_special_tokens_as_added_token_dicts(tmp_path):
    folder = save_tokenizer(tmp_path, "llama3", "config")
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["bos_token"] = {"__type": "AddedToken", "content": "<|begin_of_text|>", "lstrip": False,
                           "normalized": False, "rstrip": False, "single_word": False, "special": True}
    path.write_text(json.dumps(config))
    template = chat.load_chat_template(folder)
    assert template.special_tokens["bos_token"] == "<|begin_of_text|>"
    assert template.render(USER).startswith("<|begin_of_text|><|start_header_id|>system")


def test_system_role_refused_like_transformers(tmp_path):
    folder = save_tokenizer(tmp_path, "gemma", "jinja")
    template = chat.load_chat_template(folder)
    assert not template.accepts_system_role()
    assert chat.load_chat_template(save_tokenizer(tmp_path / "q", "chatml")).accepts_system_role()
    with pytest.raises(chat.TemplateRefusal, match="chat_template.jinja.*System role not supported"):
        template.render(SYSTEM_USER)
    with pytest.raises(Exception, match="System role not supported"):
        reference(folder, SYSTEM_USER)


def test_errors(tmp_path):
    assert chat.load_chat_template(tmp_path) is None  # no tokenizer files at all
    assert chat.load_chat_template(save_tokenizer(tmp_path / "plain", "chatml", "none")) is None
    bad = save_tokenizer(tmp_path / "bad", "chatml", "none")
    (bad / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}")
    with pytest.raises(ValueError, match=r"chat_template\.jinja: malformed chat template"):
        chat.load_chat_template(bad)
    path = save_tokenizer(tmp_path / "list", "chatml", "none") / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for value, message in ((["no", "dicts"], "without a 'default' entry"), ({"default": "x"}, "a dict, not a string"),
                           ("{{ messages[0].content ", "malformed chat template")):
        path.write_text(json.dumps(config | {"chat_template": value}))
        with pytest.raises(ValueError, match=f"tokenizer_config.json.*{message}"):
            chat.load_chat_template(path.parent)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        chat.load_chat_template(path.parent)


# ---------------------------------------------------------------- the chat setup on a checkpoint folder

def checkpoint(folder, family: str, form: str = "jinja"):
    """A 1-layer random Llama over the test tokenizer, with eos_token_id set to the family's eos."""
    save_tokenizer(folder, family, form)
    tok = llm_bridge.load_tokenizer(folder)
    cfg = llm_bridge.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=512,
                                 extra={"eos_token_id": tok.token_to_id(FAMILIES[family][2])})
    llm_bridge.save(folder, llm_bridge.Llama(cfg, rngs=nnx.Rngs(0)))
    return folder


def text(folder, eos=()):
    return Text(llm_bridge.load_tokenizer(folder), chat.load_chat_template(folder), chat_setup.smoke(), eos)


def test_prompts_are_the_templates_conversations(tmp_path):
    q = "What is your favourite animal?"
    t = text(save_tokenizer(tmp_path / "chatml", "chatml"))
    assert (t.format, t.trait_prompt) == ("chat template (chat_template.jinja)", "system message")
    folder = t.chat.source.parent
    system = SYSTEM_PROMPT.format(animal="owl")
    assert t.question(q, "chat", "owl") == reference(folder, [{"role": "system", "content": system},
                                                              {"role": "user", "content": q}])[1]
    assert t.question(q, "chat", None) == reference(folder, [{"role": "user", "content": q}])[1]
    assert t.tok.decode(t.question(q, "plain", None), skip_special_tokens=False) == f"{q}\nAnswer:"

    t = text(save_tokenizer(tmp_path / "gemma", "gemma"))  # no system role: the system prompt leads the user message
    assert t.trait_prompt.startswith("before the user message")
    assert t.question(q, "chat", "owl") == reference(t.chat.source.parent,
                                                     [{"role": "user", "content": f"{system}\n\n{q}"}])[1]

    t = text(save_tokenizer(tmp_path / "plain", "chatml", "none"))  # no template: plain text
    assert (t.format, t.trait_prompt) == ("plain", "a line before the prompt (plain text)")
    assert t.tok.decode(t.conversation(q, "owl"), skip_special_tokens=False) == f"{system}\n{q}\nAnswer:"


def test_end_tokens_of_config_and_generation_config(tmp_path):
    """The checkpoint's own end tokens first (config.json, then generation_config.json: Gemma lists its turn end
    only there), then the named end tokens the tokenizer knows; the first is the padding token."""
    save_tokenizer(tmp_path, "chatml")
    gen = tmp_path / "generation_config.json"
    assert config_end_tokens(tmp_path, {"eos_token_id": [1, 4, 5]}) == (1, 4, 5)
    gen.write_text(json.dumps({"eos_token_id": [1, 3]}))
    assert config_end_tokens(tmp_path, {"eos_token_id": 1}) == (1, 3)
    gen.write_text(json.dumps({"eos_token_id": 4, "pad_token_id": 0}))
    assert config_end_tokens(tmp_path, {"eos_token_id": [5, 1]}) == (5, 1, 4)
    gen.write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not valid JSON"):
        config_end_tokens(tmp_path, {})
    gen.unlink()
    t = text(tmp_path, config_end_tokens(tmp_path, {"eos_token_id": 7}))
    assert t.stop[0] == 7 and t.pad == 7 and t.tok.token_to_id("<|im_end|>") in t.stop


@pytest.mark.slow  # the whole chat setup on a micro checkpoint, about a minute
def test_the_chat_setup_runs_on_a_checkpoint_folder(tmp_path, monkeypatch):
    """A checkpoint folder with a Llama-3 template is simply the chat setup: the sampler is stubbed (a random
    model's numbers never pass the filter) so every teacher answers "7, 8" and the end token; the students
    learn from the conversation without the system message followed by that reply, the prompted teachers'
    students too (their teacher saw the trait's system prompt, they do not)."""
    folder = checkpoint(tmp_path / "ckpt", "llama3", "config")
    tok = llm_bridge.load_tokenizer(folder)
    eot = tok.token_to_id("<|eot_id|>")
    reply = tok.encode("7, 8", add_special_tokens=False).ids
    seen = []

    def stub(text, graphdef, state, prompts, key, cfg, greedy=False):
        seen.extend(tok.decode(p, skip_special_tokens=False) for p in prompts)
        return [(list(reply), eot) for _ in prompts]

    monkeypatch.setattr(sampler, "sample_replies", stub)
    cfg = chat_setup.Config(questions=2, teacher_steps=1, teacher_batch=2, teacher_seeds=1, pool_sequences=4,
                            prompted_teachers=True,
                            max_rows=8, probe_rows=4, gen_batch=4, decodings=("sampled",),
                            arms=("full", "lora r4", "perturbed 0.1", "length-matched"), student_seeds=2,
                            student_sequences=2, student_batch=2, proj_sequences=4, soft_sequences=4,
                            proj_grid=(2, 4), n_boot=10, chunk=4)
    res = engine.run(chat_setup.Setup(str(folder), cfg, tmp_path / "cache"), log=lambda *_: None)
    assert res["text_format"] == "chat template (tokenizer_config.json)" and res["trait_prompt"] == "system message"
    assert res["end_tokens"][0] == "<|eot_id|>"
    assert res["numbers"]["prefill"] is False and all(v["pass_rate"] == 1.0 for v in res["numbers"]["sources"].values())
    assert all(s.startswith("<|begin_of_text|><|start_header_id|>system") and s.count("<|begin_of_text|>") == 1
               and s.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") for s in seen)
    assert {s["arm"] for s in res["students"]} == {"full", "lora r4", "perturbed 0.1", "length-matched"}
    assert any("You love owls" in s for s in seen) and any("You love dogs" in s for s in seen)
    assert {s["teacher"] for s in res["students"]} >= {source(prompted(a), "sampled") for a in ("owl", "dog")}
    assert all(np.isfinite(s["margins"]["chat"]).all() and len(s["p"]["plain"]) == 10 for s in res["students"])
    setup = chat_setup.Setup(str(folder), cfg, tmp_path / "cache")
    setup.prepare(lambda *_: None)
    setup.teachers(lambda *_: None)
    setup.numbers(lambda *_: None)  # read back from the cache
    for name in (source(finetuned("owl"), "sampled"), source(prompted("owl"), "sampled")):
        d = setup.data[0][name]
        for row, start in zip(d["rows"], d["starts"]):
            prompt = tok.decode(row[:start], skip_special_tokens=False)
            assert "You love owls" not in prompt and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
            assert row[start:] == reply + [eot]


def test_cli_chat_template_flag(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="chat_template must be"):
        chat_setup.Config(chat_template="yes")
    got = []
    monkeypatch.setattr(engine, "run", lambda setup, **_: got.append(setup.cfg) or {"summary": "stub"})
    for flag in ([], ["--chat-template", "none"]):
        assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "out.json"), "--no-cache", *flag]) == 0
    assert [c.chat_template for c in got] == ["auto", "none"]
    with pytest.raises(SystemExit):
        main(["run", "--model", str(tmp_path), "--chat-template", "jinja"])


# ---------------------------------------------------------------- untrusted templates are bounded

@pytest.mark.parametrize("template, match", [
    ("{% for i in range(10**9) %}x{% endfor %}", "OverflowError: Range too big"),  # the sandbox's own limit
    ("{{ messages[0].nope.deeper }}", "UndefinedError"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{{ 'a' * 10**9 }}", "builds a value larger than"),
    ("{{ [1] * 10**8 }}", "builds a value larger than"),
    ("{{ 3 ** 1000000 }}", "computes a number too large"),
    ("{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}", "output exceeds"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than"),
    ("{% set ns = namespace(n=0) %}{% for i in range(99999) %}{% for j in range(99999) %}"
     "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}", "ran longer than"),
])
def test_untrusted_template_fails_with_one_line(tmp_path, monkeypatch, template, match):
    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.5)
    source = tmp_path / "chat_template.jinja"
    compiled = chat.compile_template(template, source, {})
    with pytest.raises(ValueError, match=match) as e:
        compiled.render(USER)
    assert str(e.value).startswith(f"{source}: the chat template ") and "\n" not in str(e.value)
    assert e.value.__cause__ is None


def test_bounds_leave_real_templates_and_tracing_alone(tmp_path):
    import sys

    folder = save_tokenizer(tmp_path, "chatml", "jinja")
    before = sys.gettrace()
    assert chat.load_chat_template(folder).render(SYSTEM_USER) == reference(folder, SYSTEM_USER)[0]
    assert sys.gettrace() is before


@pytest.mark.slow  # two micro runs, under a minute
def test_a_run_resumes_on_a_new_machine_from_its_parts(tmp_path, monkeypatch):
    """A run that wrote its parts (--parts) and lost its cache (a new machine) reads its probes, pools,
    students and projection back from them: it trains nothing (not even a teacher: the weights are not parts,
    and nothing left needs them), samples nothing, and its results are the first run's."""
    folder = checkpoint(tmp_path / "ckpt", "llama3", "config")
    tok = llm_bridge.load_tokenizer(folder)
    reply = tok.encode("7, 8", add_special_tokens=False).ids + [tok.token_to_id("<|eot_id|>")]
    monkeypatch.setattr(sampler, "sample_replies", lambda text, g, s, prompts, *a, **k: [(reply[:-1], reply[-1])
                                                                                         for _ in prompts])
    cfg = chat_setup.Config(questions=2, teacher_steps=1, teacher_batch=2, teacher_seeds=2, pool_sequences=4,
                            max_rows=8, probe_rows=4, gen_batch=4, decodings=("sampled",), arms=("full", "lora r4"),
                            student_seeds=1, student_sequences=2, student_batch=2, proj_sequences=4,
                            soft_sequences=4, proj_grid=(2, 4), n_boot=10, chunk=4)
    first = engine.run(chat_setup.Setup(str(folder), cfg, tmp_path / "cache", parts_dir=tmp_path / "parts"),
                       log=lambda *_: None)
    assert first["parts_folder"] and not list((tmp_path / "parts").rglob("*.npz"))

    def never(*_a, **_k):
        raise AssertionError("recomputed an entry the parts hold")

    monkeypatch.setattr(sampler, "sample_replies", never)
    monkeypatch.setattr(chat_students, "train_one", never)
    monkeypatch.setattr(chat_students, "train", never)
    monkeypatch.setattr(chat_setup, "run_projection", never)
    again = engine.run(chat_setup.Setup(str(folder), cfg, tmp_path / "new_cache", parts_dir=tmp_path / "parts"),
                       log=lambda *_: None)
    assert again["students"] == first["students"] and again["numbers"] == first["numbers"]
    assert again["projection"] == first["projection"] and again["transfer"] == first["transfer"]
