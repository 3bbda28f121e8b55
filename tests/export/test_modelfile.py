"""The Modelfile's TEMPLATE gives Ollama the prompt the student trained on, for the chat templates
students come with: each Modelfile is read as Ollama's parser reads it, its Go template executed as
Ollama's chat endpoint does (tests/helpers/ollama.py), and the prompt's token ids compared with the
ones potstill trained and evaluated on (PromptFormat, encode_prompt)."""

from __future__ import annotations

import pytest

from potstill.export.modelfile import render_modelfile
from potstill.models.prompting import PromptFormat, encode_prompt
from tests.export.conftest import make_bpe_tokenizer
from tests.helpers.ollama import ollama_chat_prompt, ollama_commands
from tests.helpers.tiny import CHATML

INSTRUCTION = "Which topic is this article: business, politics or sports?"

# The templates as their models ship them (text parts and tool branches left out where they do not
# change a chat of plain strings).
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

LLAMA32 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
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

PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

# Mistral's v0.3 template puts the system prompt into the *last* user turn.
MISTRAL = ("{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
           "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
           "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
           "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + "
           "message['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
           "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}{%- endif %}{%- endfor %}")

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
           "{% endif %}")

# (template, BOS, EOS, other special tokens, whether encoding adds the BOS, as Gemma's and Llama 3's do)
FAMILIES = {
    "gemma3": (GEMMA3, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], True),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"], True),
    "llama3.2": (LLAMA32, "<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"], True),
    "phi3": (PHI3, "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], False),
    "mistral": (MISTRAL, "<s>", "</s>", ["[INST]", "[/INST]"], True),
    "chatml": (CHATML, None, None, [], False),
    "smollm2": (SMOLLM2, None, None, [], False),
}

CHATS = [
    [{"role": "user", "content": "The bank said profits rose 12% to $3.5bn in 2004."}],
    [{"role": "user", "content": "The team scored a late goal.\n\nÜnïcödé 日本 ok"}],
    [{"role": "user", "content": "The film won an award."}, {"role": "assistant", "content": "business"},
     {"role": "user", "content": "No: read it again."}],
]


def family_tokenizer(name: str):
    from tokenizers.processors import TemplateProcessing

    template, bos, eos, specials, adds_bos = FAMILIES[name]
    tok = make_bpe_tokenizer()
    extra = {"additional_special_tokens": specials} if specials else {}
    tok.add_special_tokens({**({"bos_token": bos} if bos else {}), **({"eos_token": eos} if eos else {}), **extra})
    if adds_bos:
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.chat_template = template
    assert (tok("a")["input_ids"][0] == tok.bos_token_id) == adds_bos
    return tok


def served_ids(tok, modelfile: str, chat: list[dict]) -> list[int]:
    """The token ids Ollama's llama.cpp runner gets for ``chat``: the Go template's prompt, with the
    BOS the GGUF's tokenizer adds where it adds one (llama.cpp's add_bos_token, as transformers' encoding)."""
    commands = dict(ollama_commands(modelfile))
    assert "template" in commands, f"no TEMPLATE: Ollama would guess one or send the bare message\n{modelfile}"
    prompt = ollama_chat_prompt(commands["template"], commands.get("system", ""), chat)
    adds = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    return ([tok.bos_token_id] if adds else []) + tok(prompt, add_special_tokens=False)["input_ids"]


def trained_ids(tok, instruction: str, chat: list[dict]) -> list[int]:
    fmt = PromptFormat(kind="chat", instruction=instruction)
    return encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, chat), first=True)


@pytest.mark.parametrize("instruction", [INSTRUCTION, INSTRUCTION + "\n", ""])
@pytest.mark.parametrize("family", ["gemma3", "llama3", "llama3.2", "phi3", "chatml", "smollm2"])
def test_ollama_prompts_as_the_student_trained(family, instruction, capsys):
    """A student whose chat template is not ChatML (Gemma 3, Llama 3, Phi-3) had a Modelfile with no
    TEMPLATE: Ollama then picks a template of its own close to the GGUF's, or sends the bare message.
    Every one of these must prompt Ollama with the very tokens potstill trained on, with or without a
    system prompt (a YAML block instruction ends in a newline, which Llama 3 trims), for one message
    and for a conversation; ChatML (the hand-written template) is held to the same."""
    tok = family_tokenizer(family)
    modelfile = render_modelfile("./student-f16.gguf", tok, instruction, 4)
    for chat in CHATS:
        assert served_ids(tok, modelfile, chat) == trained_ids(tok, instruction, chat), (family, chat, modelfile)
    assert "could not" not in capsys.readouterr().err


@pytest.mark.parametrize("instruction", [INSTRUCTION, ""])
@pytest.mark.parametrize("family", ["gemma3", "llama3", "llama3.2", "phi3", "chatml", "smollm2"])
def test_a_clients_system_message_leaves_the_trained_prompt_as_potstill_serve_does(family, instruction):
    """Found by a review: the TEMPLATE wrote ``.System``, where Ollama puts a client's own system
    message in place of the Modelfile's SYSTEM (the openai SDK's users usually send one), so the student
    read "be a pirate" where it trained on the task instruction; ``potstill serve`` drops a client's
    system message. The TEMPLATE now writes the instruction itself and reads no ``.System``."""
    tok = family_tokenizer(family)
    modelfile = render_modelfile("./student-f16.gguf", tok, instruction, 4)
    assert not any(line.startswith("SYSTEM") for line in modelfile.splitlines())
    for chat in CHATS:
        for sent in ([{"role": "system", "content": "You are a pirate."}, *chat],
                     [{"role": "developer", "content": "Answer in French."}, *chat]):
            assert served_ids(tok, modelfile, sent) == trained_ids(tok, instruction, chat), (family, sent)


def test_a_template_that_places_the_system_prompt_last_translates_for_one_message(capsys):
    """Mistral's template writes the system prompt into the last user turn: one user message (what a
    task serves) prompts as in training, and the export says that a conversation does not."""
    tok = family_tokenizer("mistral")
    modelfile = render_modelfile("./student-f16.gguf", tok, INSTRUCTION, 4)
    assert "not a conversation of several turns" in capsys.readouterr().err
    for chat in CHATS[:2]:
        assert served_ids(tok, modelfile, chat) == trained_ids(tok, INSTRUCTION, chat)
    assert served_ids(tok, modelfile, CHATS[2]) != trained_ids(tok, INSTRUCTION, CHATS[2])  # as warned
    no_system = render_modelfile("./student-f16.gguf", tok, "", 4)  # without one, a conversation is fine too
    assert served_ids(tok, no_system, CHATS[2]) == trained_ids(tok, "", CHATS[2])


def test_a_template_it_cannot_translate_is_said_in_the_modelfile_and_the_warning(capsys):
    """A template that rewrites the message (here: upper case) is no fixed text around it: no TEMPLATE,
    a comment in the Modelfile saying why, and one warning line."""
    tok = make_bpe_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] | upper }}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    modelfile = render_modelfile("./student-f16.gguf", tok, INSTRUCTION, 4)
    out = capsys.readouterr().err
    assert "could not be translated into an Ollama TEMPLATE (it does not write each message once" in out
    assert len(out.strip().splitlines()) == 1, out
    assert "# No TEMPLATE: potstill could not translate" in modelfile
    commands = ollama_commands(modelfile)  # still a Modelfile Ollama reads
    assert "template" not in dict(commands) and ("system", INSTRUCTION) in commands


def _call(i: str, name: str, args: str) -> dict:
    return {"id": i, "type": "function", "function": {"name": name, "arguments": args}}


# A tools chat as an OpenAI client sends it back: its request, the student's calls (two at once), each
# call's result, then a follow-up; the calls' arguments flat, keys in the order Go writes a map (sorted).
TOOL_CHATS = [
    [{"role": "user", "content": "Weather in Oslo?"},
     {"role": "assistant", "content": None, "tool_calls": [_call("c1", "get_weather", '{"city": "Oslo", "unit": "C"}')]},
     {"role": "tool", "tool_call_id": "c1", "content": "4 C, rain"}],
    [{"role": "user", "content": "Weather in Oslo and Rome?"},
     {"role": "assistant", "content": "", "tool_calls": [_call("c1", "get_weather", '{"city": "Oslo"}'),
                                                         _call("c2", "get_weather", '{"city": "Rome", "days": 2}')]},
     {"role": "tool", "tool_call_id": "c1", "content": "4 C"}, {"role": "tool", "tool_call_id": "c2", "content": "21 C"},
     {"role": "assistant", "content": "Oslo 4 C, Rome 21 C."}, {"role": "user", "content": "And tomorrow?"}],
]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("family", ["gemma3", "llama3", "phi3", "chatml"])
def test_ollama_prompts_tool_calls_and_results_as_the_student_trained(family, parallel, capsys):
    """The TEMPLATE wrote user and assistant turns only: a tool result never reached the student, and
    an assistant turn of tool calls (no content) was an empty turn. Training reads them as text
    (tool_calls.as_text_turns): the calls' JSON, then one user turn of `Result of NAME: ...` lines;
    Ollama must prompt with those very tokens, and take a request with tools (the TEMPLATE reads .Tools)."""
    tok = family_tokenizer(family)
    modelfile = render_modelfile("./student-f16.gguf", tok, INSTRUCTION, 4, parallel=parallel)
    template = dict(ollama_commands(modelfile))["template"]
    assert ".Tools" in template and ".ToolCalls" in template
    for chat in TOOL_CHATS:
        fmt = PromptFormat(kind="chat", instruction=INSTRUCTION, calls_as_list=parallel)
        trained = encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, chat), first=True)
        assert "Result of get_weather: 4 C" in fmt.query(tok, chat)  # what is compared holds the result
        assert served_ids(tok, modelfile, chat) == trained, (family, chat, template)
    assert "could not" not in capsys.readouterr().err
