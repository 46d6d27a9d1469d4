"""The relay's byte work: cutting a server-sent-event stream into events, and swapping `id` and
`model` in vLLM's JSON without decoding it (service/gateway.py `_Events`, `_Rewrite`).

The end-to-end behaviour (through a real `ratchet serve`, to the real vLLM) is in
tests/test_gateway_shapes.py; these check the two pieces against every way bytes can arrive.
"""

from __future__ import annotations

import json

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from service.gateway import _Events, _Rewrite

LOG_ID, PROJECT = "log-0123456789abcdef", "shop"


def chunk(**fields: object) -> bytes:
    """A chunk as vLLM writes it: compact JSON, `id` first, `model` after `created`."""
    body = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "shop@v3",
            "choices": [{"index": 0, "delta": {"content": "Paris"}}], **fields}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


payloads = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40),
        st.just("[DONE]"),
    ).map(str.encode),
    min_size=1,
    max_size=8,
)


@given(payloads, st.lists(st.integers(min_value=0, max_value=400), max_size=12), st.booleans())
def test_events_come_out_whole_whatever_the_pieces(sent: list[bytes], cuts: list[int], crlf: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    stream = b"".join(b"data: " + p + end + end for p in sent)
    framing, got = _Events(), []
    at = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        got += framing.feed(stream[at:cut])
        at = cut
    assert got == sent


def test_multi_line_data_and_comments_follow_the_sse_rules() -> None:
    framing = _Events()
    assert framing.feed(b': keep-alive\n\ndata: {"a":\ndata: 1}\n\nevent: x\ndata:[DONE]\n\n') == [
        b'{"a":\n1}',
        b"[DONE]",
    ]


def test_the_fast_swap_changes_only_id_and_model() -> None:
    rewrite = _Rewrite(LOG_ID, PROJECT)
    first, second = chunk(), chunk(choices=[{"index": 1, "delta": {"content": '"id":"chatcmpl-abc"'}}])
    for data in (first, second):
        out = rewrite.apply(data)
        assert out == data.replace(b'"chatcmpl-abc"', b'"log-0123456789abcdef"', 1).replace(
            b'"shop@v3"', b'"shop"', 1
        )
    # The text inside the content (its quotes escaped) is untouched.
    assert json.loads(rewrite.apply(second))["choices"][0]["delta"]["content"] == '"id":"chatcmpl-abc"'  # type: ignore[arg-type]


def test_tool_call_ids_are_left_alone() -> None:
    rewrite = _Rewrite(LOG_ID, PROJECT)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    out = json.loads(rewrite.apply(chunk(choices=[{"index": 0, "delta": {"tool_calls": [call]}}])) or b"")
    assert (out["id"], out["model"], out["choices"][0]["delta"]["tool_calls"][0]["id"]) == (
        LOG_ID,
        PROJECT,
        "call_1",
    )


def test_other_spellings_are_decoded_and_swapped() -> None:
    rewrite = _Rewrite(LOG_ID, PROJECT)
    spaced = json.dumps({"model": "shop@v3", "id": "chatcmpl-abc", "choices": []}).encode()
    changing = [chunk(), chunk(id="chatcmpl-other")]
    for data in (spaced, *changing):
        out = msgspec.json.decode(rewrite.apply(data) or b"")
        assert (out["id"], out["model"]) == (LOG_ID, PROJECT)


def test_an_error_event_passes_as_it_came_and_an_answer_gets_an_id() -> None:
    rewrite = _Rewrite(LOG_ID, PROJECT)
    error = b'{"error": {"message": "boom", "code": 500}}'
    assert rewrite.apply(error) == error
    assert json.loads(rewrite.apply(b'{"choices": []}', add=True) or b"") == {
        "choices": [],
        "id": LOG_ID,
        "model": PROJECT,
    }
    assert rewrite.apply(b"[1, 2]") is None and rewrite.apply(b"not json") is None
