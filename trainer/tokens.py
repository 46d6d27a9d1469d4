"""Examples measured in the base model's tokens, rendered as the serving side renders them.

`Renderer` renders an example with the base model's tokenizer and chat template exactly as TRL
will (`apply_chat_template` on the prompt with the generation prompt, and on prompt + answer; the
answer starts where the two diverge), after preparing the messages and tools as vLLM does before
its chat template (`formats.rendering`). `Renderer.prompt_ids` is therefore what vLLM's
`/tokenize` returns for the same request, and what the adapter sees in production.

`fit_examples` keeps what can be trained within `limit` tokens (the spec's `optim.max_length`,
at most the model's context):

1. A tool call (in the prompt or the answer) needs a template that renders tool calls and tool
   results (TRL's `supports_tool_calling` probe); otherwise the example is dropped:
   `tool_calls_not_rendered`.
2. A prompt too long for the budget loses its oldest turns first (a turn starts at a user message,
   so a tool call never loses its result), the system/developer messages at its start kept; if
   even the last turn does not fit beside them, the system messages go too ("where possible").
   Counted in `prompts_truncated` / `system_dropped`.
3. An example whose answer still does not fit is dropped: `too_long`. One the template (or vLLM's
   preparation, `formats.rendering.RenderError`) refuses is dropped: `template_error` (vLLM would
   answer such a request 400, e.g. Gemma's or Mistral's on roles that do not alternate); a chat
   example for a tokenizer without a chat template: `no_chat_template`. A completions prompt is
   never cut (no turns to cut at).
4. An example whose prompt, rendered with the generation prompt (as served), is not the start of
   the prompt rendered with its answer is dropped: `prompt_not_prefix`. TRL would train the answer
   on a context serving never shows (Mistral's template moves the system prompt into the last user
   turn, so it vanishes once the answer follows). Rendering a prompt with its system message cut
   (step 2) is checked the same way.

Nothing here raises for one example: each is kept or dropped with its reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from formats.chat import Tool
from formats.log import Message
from formats.rendering import content_format, template_message, template_messages, template_tools
from trainer.dataset import KINDS, Example, Examples, with_kept

log = logging.getLogger(__name__)
HEAD_ROLES = ("system", "developer")
CACHE_RENDERS = 4096
CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_context(base_model: str | Path, tokenizer: Any = None) -> int | None:
    """The longest sequence the base model takes, from its config (and the tokenizer's
    `model_max_length` when that is a real limit), or None when neither says."""
    from transformers import AutoConfig

    limits = []
    try:
        config = AutoConfig.from_pretrained(base_model, local_files_only=True).get_text_config()
    except Exception:  # an unknown architecture: the tokenizer may still tell
        config = None
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 10**7:  # transformers' "no limit" is ~1e30
        limits.append(model_max)
    return min(limits) if limits else None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _turns(messages: list[Message]) -> tuple[list[Message], list[list[Message]]]:
    """The system/developer messages at the start, and the rest cut into turns (each starting at a
    user message; whatever precedes the first user message is a turn of its own)."""
    head_len = 0
    while head_len < len(messages) and messages[head_len].role in HEAD_ROLES:
        head_len += 1
    turns: list[list[Message]] = []
    for m in messages[head_len:]:
        if m.role == "user" or not turns:
            turns.append([])
        turns[-1].append(m)
    return messages[:head_len], turns


class Renderer:
    """Renders examples with one tokenizer and its chat template (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.renders_tools = self._renders_tools()
        # Recent renders, keyed by their inputs: an example's prompt is rendered again for each of its
        # answers and kinds (examples of one row are fitted one after the other). Bounded: a snapshot
        # of long prompts would not fit in memory whole.
        self._cache: OrderedDict[str, list[int]] = OrderedDict()

    def _renders_tools(self) -> bool:
        if self.tokenizer.chat_template is None:
            return False
        from trl.chat_template_utils import supports_tool_calling

        try:
            return bool(supports_tool_calling(self.tokenizer))
        except Exception:  # a template that fails on the probe in any other way renders no tools
            return False

    def _template(self, tools: list[dict[str, Any]] | None) -> str:
        # The template vLLM and transformers pick: a tokenizer may name a separate "tool_use" one.
        return self.tokenizer.get_chat_template(None, tools)

    def _ids(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, prompt: bool
    ) -> list[int]:
        key = json.dumps([messages, tools, prompt], sort_keys=True, ensure_ascii=False)
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            return ids
        ids = list(
            self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=prompt, tokenize=True, return_dict=True
            )["input_ids"]
        )
        self._cache[key] = ids
        if len(self._cache) > CACHE_RENDERS:
            self._cache.popitem(last=False)
        return ids

    def prepare(
        self, messages: Sequence[Message], tools: Sequence[Tool] | None
    ) -> tuple[list[dict], list | None]:
        """Messages and tools as the chat template gets them (as vLLM prepares them)."""
        prepared_tools = template_tools(tools)
        return template_messages(messages, self._template(prepared_tools)), prepared_tools

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[Tool] | None = None) -> list[int]:
        """Token ids of the prompt with the generation prompt: what vLLM's `/tokenize` returns for
        `{"messages": ..., "tools": ...}` and what the model continues from when served."""
        prepared, prepared_tools = self.prepare(messages, tools)
        return self._ids(prepared, prepared_tools, True)

    def conversation_ids(
        self, messages: Sequence[Message], tools: Sequence[Tool] | None, answer: Message
    ) -> list[int]:
        """Token ids of `messages` followed by `answer` as the last assistant message (no generation
        prompt), prepared as vLLM prepares them. Raises what the template or `formats.rendering`
        raise for a conversation they refuse."""
        prepared, prepared_tools = self.prepare(messages, tools)
        return self._ids([*prepared, template_message(answer)], prepared_tools, False)

    # --- fitting

    def _measure_chat(self, prompt: list[Message], example: Example) -> tuple[int, int, dict[str, Any]] | str:
        """(length, answer tokens, TRL row) of `example` with `prompt`; or why it cannot be
        trained as served: `template_error` or `prompt_not_prefix` (see the module docstring)."""
        try:
            prepared, tools = self.prepare(prompt, example.tools)
            content_as = content_format(self._template(tools))
            answers = {k: template_message(m, content_as) for k, m in example.answers.items()}
            prompt_ids = self._ids(prepared, tools, True)
            length, answer_tokens = 0, 0
            for answer in answers.values():
                full = self._ids([*prepared, answer], tools, False)
                start = _common_prefix(prompt_ids, full)
                if start < len(prompt_ids):
                    return "prompt_not_prefix"
                if len(full) == start:
                    return "template_error"  # the template renders no answer tokens: nothing to train on
                length = max(length, len(full))
                answer_tokens += len(full) - start
        except Exception as exc:  # RenderError, jinja's TemplateError, a TypeError on an odd message
            log.debug("template refused %s: %s", example.log_id, exc)
            return "template_error"
        row: dict[str, Any] = {"prompt": prepared, **{k: [a] for k, a in answers.items()}}
        row["tools"] = None if tools is None else json.dumps(tools, ensure_ascii=False)
        if example.label is not None:
            row["label"] = example.label
        return length, answer_tokens, row

    def _fit_chat(self, example: Example, limit: int) -> tuple[Example, str | None] | str:
        assert isinstance(example.prompt, list)
        if self.tokenizer.chat_template is None:
            return "no_chat_template"
        if example.uses_tool_calls and not self.renders_tools:
            return "tool_calls_not_rendered"
        measured = self._measure_chat(example.prompt, example)
        if isinstance(measured, str):
            return measured
        if measured[0] <= limit:
            return self._fitted(example, measured), None
        head, turns = _turns(example.prompt)

        def attempt(messages: list[Message]) -> tuple[int, int, dict] | None:
            m = self._measure_chat(messages, example)
            return m if not isinstance(m, str) and m[0] <= limit else None

        # The most recent turns that fit beside the head: binary search over how many are kept.
        best, low, high = None, 1, len(turns) - 1
        while low <= high:
            keep = (low + high) // 2
            m = attempt([*head, *(msg for turn in turns[-keep:] for msg in turn)])
            if m is None:
                high = keep - 1
            else:
                best, low = m, keep + 1
        if best is not None:
            return self._fitted(example, best), "truncated"
        if head and turns:
            m = attempt(turns[-1])
            if m is not None:
                return self._fitted(example, m), "system_dropped"
        return "too_long"

    def _fit_text(self, example: Example, limit: int) -> tuple[Example, str | None] | str:
        # TRL's standard format: prompt and prompt + answer tokenized as plain text, EOS appended.
        assert isinstance(example.prompt, str)
        eos = self.tokenizer.eos_token or ""
        prompt_ids = self.tokenizer(text=example.prompt)["input_ids"]
        length, answer_tokens = 0, 0
        for answer in example.answers.values():
            text = answer.content or ""
            full = self.tokenizer(text=example.prompt + (text if text.endswith(eos) else text + eos))[
                "input_ids"
            ]
            start = _common_prefix(prompt_ids, full)
            if len(full) == start:
                return "template_error"
            length = max(length, len(full))
            answer_tokens += len(full) - start
        if length > limit:
            return "too_long"
        row: dict[str, Any] = {"prompt": example.prompt}
        row |= {k: m.content or "" for k, m in example.answers.items()}
        if example.label is not None:
            row["label"] = example.label
        return self._fitted(example, (length, answer_tokens, row)), None

    @staticmethod
    def _fitted(example: Example, measured: tuple[int, int, dict[str, Any]]) -> Example:
        length, answer_tokens, row = measured
        return replace(example, trl=row, length=length, answer_tokens=answer_tokens)

    def fit(self, example: Example, limit: int) -> tuple[Example, str | None] | str:
        """The example rendered and fitted into `limit` tokens, with "truncated" or
        "system_dropped" when its prompt was cut; or the reason it is dropped."""
        if example.is_chat:
            return self._fit_chat(example, limit)
        return self._fit_text(example, limit)


def fit_examples(examples: Examples, renderer: Renderer, limit: int) -> Examples:
    """Every example rendered and fitted into `limit` tokens, in its original order; the rest
    dropped and counted."""
    # Row by row (a row's SFT, KTO and DPO examples share renders), then back in each kind's order.
    order = sorted(
        ((e.log_id, kind, i, e) for kind in KINDS for i, e in enumerate(examples.of(kind))),
        key=lambda t: t[:3],
    )
    results: dict[tuple[str, int], Example] = {}
    dropped: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    truncated: Counter[str] = Counter()
    system_dropped: Counter[str] = Counter()
    for _, kind, i, example in order:
        result = renderer.fit(example, limit)
        if isinstance(result, str):
            dropped[kind][result] += 1
            continue
        results[kind, i], note = result
        if note == "truncated":
            truncated[kind] += 1
        elif note == "system_dropped":
            system_dropped[kind] += 1
    kept = {
        kind: [results[kind, i] for i in range(len(examples.of(kind))) if (kind, i) in results]
        for kind in KINDS
    }
    return with_kept(
        examples,
        kept,
        dropped=dropped,
        prompts_truncated=truncated,
        system_dropped=system_dropped,
        fitted=True,
    )
