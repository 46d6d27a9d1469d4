"""The PII scrubber: Presidio's real recognisers on decoded strings (no model download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formats.chat import FunctionCall, ToolCall
from formats.log import Message
from service.pii import REDACTED, PiiSetupError, Scrubber

PII = {
    "e-mail": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "US phone": "555-123-4567",
    "UK phone": "+44 20 7946 0958",
    "German phone": "+49 30 12345678",
    "French phone": "+33 6 12 34 56 78",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "IPv4": "192.168.1.20",
    "IPv6": "2001:db8::8a2e:370:7334",
    "US SSN": "536-90-4399",
    "UK NINO": "AB 12 34 56 C",
    "Spanish NIF": "12345678Z",
    "Italian fiscal code": "RSSMRA85T10A562S",
    "OpenAI key": "sk-abcdefghijklmnopqrstu",
    "AWS key": "AKIAIOSFODNN7EXAMPLE",
    "GitHub token": "ghp_" + "a1B2" * 9,
    "long hex": "3f2a" * 10,
}
NOT_PII = [
    "what is 2026-11-24 plus 1000 days?",
    "upgrade to version 1.2.3 at 12:30:45",
    "order #12345 costs $12.99",
    "std::vector<int> v(3);",
    "see jane.do and example.com",
    "",
]


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber(phone_regions=("US", "GB", "DE", "FR"))


@pytest.mark.parametrize("kind", list(PII))
@pytest.mark.parametrize("template", ["{}", "x {} y", "line one\n{}", "key:\t{}\tnext", "({}).", "a\n{}\nb"])
def test_each_class_is_redacted_wherever_it_sits(scrubber: Scrubber, kind: str, template: str) -> None:
    text = template.format(PII[kind])
    assert scrubber.scrub(text) == template.format(REDACTED)


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_text_is_left_alone(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scrub(text) == text


def test_json_in_a_string_is_scrubbed_value_by_value_and_stays_json(scrubber: Scrubber) -> None:
    text = json.dumps({"to": "jane.doe@example.com", "note": "line\njane.doe@example.com", "n": 3})
    assert json.loads(scrubber.scrub(text)) == {"to": REDACTED, "note": f"line\n{REDACTED}", "n": 3}
    assert scrubber.scrub('{"not json": ') == '{"not json": '


def test_messages_tool_arguments_and_results_are_scrubbed(scrubber: Scrubber) -> None:
    call = ToolCall(id="c", function=FunctionCall(name="mail", arguments='{"to": "jane.doe@example.com"}'))
    dict_call = ToolCall(
        id="d", function=FunctionCall(name="mail", arguments={"to": ["jane.doe@example.com"]})
    )
    messages = [
        Message(role="user", content="I am jane.doe@example.com"),
        Message(role="assistant", content=None, tool_calls=[call, dict_call]),
        Message(role="tool", tool_call_id="c", content="sent to jane.doe@example.com"),
        Message(role="user", content="thanks"),
    ]
    clean = scrubber.scrub_messages(messages)
    assert clean[0].content == f"I am {REDACTED}" and clean[2].content == f"sent to {REDACTED}"
    assert json.loads(clean[1].tool_calls[0].function.arguments) == {"to": REDACTED}
    assert clean[1].tool_calls[1].function.arguments == {"to": [REDACTED]}
    assert clean[3] is messages[3], "an unchanged message is not copied"
    assert messages[0].content == "I am jane.doe@example.com", "the input is not changed"


def test_a_repeated_text_reaches_presidio_once(scrubber: Scrubber) -> None:
    system = "You are the support bot of ACME. Escalate to +1 415-555-0100. " * 20
    before = dict(scrubber.stats)
    results = {scrubber.scrub(system) for _ in range(50)}
    assert len(results) == 1 and "415-555-0100" not in results.pop()
    assert scrubber.stats["analyzed"] - before["analyzed"] == 1
    assert scrubber.stats["cache_hits"] - before["cache_hits"] == 49


def test_configured_patterns_are_case_sensitive_regexes() -> None:
    scrubber = Scrubber(extra_patterns=[r"CUST-\d{4,}"])
    assert scrubber.scrub("ids CUST-48213 and cust-48213") == f"ids {REDACTED} and cust-48213"
    with pytest.raises(PiiSetupError, match="extra_pii_patterns"):
        Scrubber(extra_patterns=["(unclosed"])


def test_names_need_a_configured_ner_pipeline(scrubber: Scrubber, tmp_path: Path) -> None:
    """No spaCy model ships or can be downloaded here: a pipeline saved to a directory (an entity
    ruler labelling PERSON) stands in for one, loaded by path as a model package would be by name."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Jane Doe"}])
    nlp.to_disk(tmp_path / "ner")
    assert scrubber.scrub("ask Jane Doe") == "ask Jane Doe", "off by default"
    with_ner = Scrubber(ner_model=str(tmp_path / "ner"))
    assert with_ner.scrub("ask Jane Doe, jane.doe@example.com") == f"ask {REDACTED}, {REDACTED}"
    with pytest.raises(PiiSetupError, match="pii_ner_model 'no_such_model'"):
        Scrubber(ner_model="no_such_model")
