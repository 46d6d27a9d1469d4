"""PII scrubbing of decoded text, with Microsoft Presidio's recognisers.

`Scrubber.scrub(text)` replaces every span a recogniser finds with `[REDACTED]`. It is called on
decoded strings (a message's text, a tool call's arguments, a tool's result, an answer, a
correction), never on JSON text: a string that is itself JSON (tool arguments and results usually
are) is decoded, its string values scrubbed, and encoded again, so what was valid JSON stays valid.

What is looked for, and why these (each a Presidio recogniser unless said otherwise):
- e-mail addresses, credit cards (Luhn-checked), IBANs (checksum), IP addresses (v4 and v6; the
  weak `::` pattern is below the threshold), phone numbers (Google's libphonenumber in the
  configured regions, leniency "valid": `+44 20 7946 0958` is a number, `2026-11-24` and `1000`
  are not; plus Ratchet's pattern for North American numbers as people write them, `555-123-4567`
  included, which libphonenumber rejects for its unassigned area code);
- national ids whose format is distinctive: US SSN (formatted) and ITIN, UK NINO, Canadian SIN
  (formatted), Spanish NIF/NIE, Italian fiscal code, Singapore NRIC/FIN, Finnish personal
  identity code, Korean RRN (Indian PAN is left out: its patterns cost ~25 ms per long text). Digit-only ids whose only test is a checksum (Aadhaar, TFN,
  PESEL, NHS, Steuer-ID, personnummer) are left out: their checksums pass on about one random
  number in ten, so order and tracking numbers would be redacted (measured); add a pattern with
  context to `snapshot.extra_pii_patterns` if your traffic has them;
- key-like secrets (Ratchet's own patterns): OpenAI/Anthropic `sk-...`, Stripe, AWS `AKIA...`,
  GitHub, Slack, Google API keys, JWTs, PEM private keys, `api_.../token-...` strings, and hex
  strings of 32+ digits;
- `snapshot.extra_pii_patterns` (Python `regex` syntax, case-sensitive);
- names, with `snapshot.pii_ner_model` only: a spaCy pipeline's PERSON entities. No model ships
  with Ratchet (the official spaCy models are not on PyPI); install one and name it.
Presidio's URL and date recognisers are not used (they fire on `jane.do` and on every date).

Cost, measured (bench/snapshot.py): a Presidio call costs about 1 ms, and 1.5 ms more per phone
region, on a short text. So a text reaches Presidio only past three cheaper tests: could any
recogniser match at all (substring tests and a digit count: most texts stop here), was it seen
before (a cache by the text's hash: a system prompt repeats on every request), and which
recognisers' own patterns match (only those run). Pattern recognisers run on Presidio's no-op
NLP engine (no spaCy pass per text, no lemma-based context boost, which needs lemmas a blank
pipeline has not got). Presidio is imported when the first scrubber is built, without torch or
transformers (see `_without`), not when Ratchet starts.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec
import regex

from formats.chat import FunctionCall, ToolCall
from formats.log import Message

if TYPE_CHECKING:
    from service.config import SnapshotSettings

REDACTED = "[REDACTED]"
LANGUAGE = "en"

# Presidio's national-id recognisers used. Their bare-digit "very weak" patterns score under the
# 0.5 kept, so they are dropped from recognisers that do not validate a checksum (a validated
# match scores 1).
_NATIONAL_IDS = (
    "UsSsnRecognizer", "UsItinRecognizer", "UkNinoRecognizer", "CaSinRecognizer", "EsNifRecognizer",
    "EsNieRecognizer", "ItFiscalCodeRecognizer", "SgFinRecognizer", "FiPersonalIdentityCodeRecognizer",
    "KrRrnRecognizer",
)  # fmt: skip
# Lowest score kept per entity; anything else: 0.5.
_MIN_SCORE = {"PHONE_NUMBER": 0.4, "PERSON": 0.5}
_CASE_SENSITIVE = regex.MULTILINE  # non-zero, or Presidio falls back to its IGNORECASE default
_SECRETS = [
    ("openai_or_anthropic_key", r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}", 0.9),
    ("stripe_key", r"\b[rps]k_(?:live|test)_[A-Za-z0-9]{16,}", 0.9),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", 0.9),
    ("slack_token", r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", 0.9),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", 0.9),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", 0.9),
    ("private_key", r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----", 0.9),
    ("prefixed_key", r"\b(?:api|key|token|secret|pk|rk|sk)[_\-][A-Za-z0-9_\-]{16,}", 0.6),
    ("long_hex", r"\b[A-Fa-f0-9]{32,}\b", 0.6),
]
# North American numbers in their usual written shapes, whether or not the area code exists
# (libphonenumber only takes valid ones, and apps are full of 555 numbers): 3-3-4 digits with
# separators, so dates (4-2-2) and bare digit runs do not match.
_NANP = r"(?<![\w+])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?!\w)"
# No recogniser above can match a text without one of these: an "@", four digits, an IPv6-like
# colon group, or a secret's prefix (the cheap first test; configured patterns have their own).
# Plain substring tests and digit counts: one regex with these as alternatives cost ~1 ms per
# 1.3 KB system prompt, more than the rest of a snapshot row.
_LITERALS = ("@", "::", "sk-", "_live_", "_test_", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
             "github_pat_", "xox", "AIza", "eyJ", "-----BEGIN")  # fmt: skip
_KEY_WORDS = ("api_", "api-", "key_", "key-", "token_", "token-", "secret_", "secret-")
_FOUR_DIGITS = regex.compile(r"\d\D*+\d\D*+\d\D*+\d")
_IPV6_GROUP = regex.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:")


def _maybe_pii(text: str) -> bool:
    """False only when no built-in recogniser can match `text` (see `_LITERALS`)."""
    if any(map(text.__contains__, _LITERALS)):
        return True
    if text.isascii():
        if sum(map(text.count, "0123456789")) >= 4:
            return True
    elif _FOUR_DIGITS.search(text):
        return True
    if ":" in text and _IPV6_GROUP.search(text):
        return True
    return any(map(text.lower().__contains__, _KEY_WORDS))


# Texts at least this long are looked up in the cache before any other test.
_LONG_TEXT = 256
# libphonenumber finds nothing with fewer digits than this close together.
_PHONE_GATE = regex.compile(r"\d(?:[\s\-./()]{0,3}\d){5}")
_ALWAYS: Callable[[str], Any] = lambda text: True  # noqa: E731


class PiiSetupError(RuntimeError):
    """The scrubber cannot be built as configured (a bad extra pattern, a missing spaCy model)."""


class _Gated:
    """A Presidio recogniser's entities and the cheap test that says it could match a text."""

    def __init__(self, entities: list[str], could_match: Callable[[str], Any]) -> None:
        self.entities = entities
        self.could_match = could_match


def _strong(recognizer: Any) -> Any:
    """`recognizer` without the patterns whose matches would score under the threshold anyway
    (unless it validates matches, which then score 1): Presidio would run them for nothing, and
    some cost milliseconds per long text."""
    from presidio_analyzer import PatternRecognizer

    if type(recognizer).validate_result is PatternRecognizer.validate_result:
        threshold = min(_MIN_SCORE.get(e, 0.5) for e in recognizer.supported_entities)
        recognizer.patterns = [p for p in recognizer.patterns if p.score >= threshold]
    return recognizer


def _pattern_gate(recognizer: Any) -> Callable[[str], Any]:
    compiled = [regex.compile(p.regex, flags=recognizer.global_regex_flags) for p in recognizer.patterns]
    return lambda text: any(c.search(text) for c in compiled)


class Scrubber:
    """Redacts PII in strings and in the messages of a conversation (see the module docstring).

    Thread-safe; one instance is shared by snapshots and exports so its cache carries over.
    `stats` counts texts seen, texts that reached Presidio, and cache hits.
    """

    def __init__(
        self,
        *,
        extra_patterns: Iterable[str] = (),
        ner_model: str | None = None,
        phone_regions: Iterable[str] = ("US",),
        cache_entries: int = 50_000,
    ) -> None:
        extra = list(extra_patterns)
        self._analyzer, self._gated = _build_analyzer(extra, ner_model, tuple(phone_regions))
        self._always = ner_model is not None  # NER has no cheap test: every text goes to it
        compiled = [regex.compile(p, flags=_CASE_SENSITIVE) for p in extra]
        self._configured: Callable[[str], Any] = lambda text: any(c.search(text) for c in compiled)
        self._cache: OrderedDict[bytes, str | None] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        self.stats = {"texts": 0, "analyzed": 0, "cache_hits": 0}

    def scrub(self, text: str) -> str:
        """`text` with every PII span replaced by `[REDACTED]`; a JSON object or array in `text`
        is scrubbed value by value and stays valid JSON."""
        if not text:
            return text
        if text.lstrip()[:1] in ("{", "["):
            try:
                value = msgspec.json.decode(text)
            except msgspec.DecodeError:
                pass
            else:
                scrubbed = self.scrub_value(value)
                return text if scrubbed == value else msgspec.json.encode(scrubbed).decode()
        return self._scrub_text(text)

    def scrub_value(self, value: Any) -> Any:
        """A decoded JSON value with every string in it scrubbed (object keys kept)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, list):
            return [self.scrub_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.scrub_value(v) for k, v in value.items()}
        return value

    def scrub_message(self, message: Message) -> Message:
        """A copy of `message` with its text and its tool calls' arguments scrubbed."""
        content = self.scrub(message.content) if message.content else message.content
        calls = (
            [self._scrub_call(c) for c in message.tool_calls] if message.tool_calls else message.tool_calls
        )
        if content is message.content and calls == message.tool_calls:
            return message
        return msgspec.structs.replace(message, content=content, tool_calls=calls)

    def scrub_messages(self, messages: list[Message]) -> list[Message]:
        return [self.scrub_message(m) for m in messages]

    def _scrub_call(self, call: ToolCall) -> ToolCall:
        function = call.function
        if function is None:
            if call.custom is None:
                return call
            return msgspec.structs.replace(
                call, custom=msgspec.structs.replace(call.custom, input=self.scrub(call.custom.input))
            )
        arguments = (
            self.scrub(function.arguments)
            if isinstance(function.arguments, str)
            else self.scrub_value(function.arguments)
        )
        if arguments == function.arguments:
            return call
        return msgspec.structs.replace(call, function=FunctionCall(name=function.name, arguments=arguments))

    def _scrub_text(self, text: str) -> str:
        """Three tests, cheapest first: could any recogniser match at all (substring tests; most
        texts stop here)? Was this text seen before (the cache; first, for long texts: a system
        prompt repeats on every request)? Which recognisers could match (their own patterns)?
        Only those run in Presidio."""
        with self._lock:
            self.stats["texts"] += 1
            key = None
            if len(text) >= _LONG_TEXT:
                key = _digest(text)
                if (found := self._cached(key, text)) is not None:
                    return found
            if not (self._always or _maybe_pii(text) or self._configured(text)):
                if key is not None:
                    self._remember(key, text, text)
                return text
            if key is None:
                key = _digest(text)
                if (found := self._cached(key, text)) is not None:
                    return found
            entities = sorted({e for g in self._gated if g.could_match(text) for e in g.entities})
            scrubbed = text
            if entities:
                self.stats["analyzed"] += 1
                results = self._analyzer.analyze(text, language=LANGUAGE, entities=entities)
                spans = [
                    _trimmed(text, r.start, r.end)
                    for r in results
                    if r.score >= _MIN_SCORE.get(r.entity_type, 0.5)
                ]
                scrubbed = _redact(text, spans)
            self._remember(key, text, scrubbed)
            return scrubbed

    def _cached(self, key: bytes, text: str) -> str | None:
        if key not in self._cache:
            return None
        self._cache.move_to_end(key)
        self.stats["cache_hits"] += 1
        cached = self._cache[key]
        return text if cached is None else cached

    def _remember(self, key: bytes, text: str, scrubbed: str) -> None:
        self._cache[key] = None if scrubbed == text else scrubbed  # None: unchanged (no copy kept)
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """A span without the unmatched opening bracket libphonenumber includes in `(+44 20 ...)`."""
    if text[start] == "(" and ")" not in text[start:end]:
        start += 1
    return start, end


def _redact(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span (overlapping ones merged) replaced by REDACTED."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], REDACTED]
        at = end
    out.append(text[at:])
    return "".join(out)


def _build_analyzer(
    extra_patterns: list[str], ner_model: str | None, phone_regions: tuple[str, ...]
) -> tuple[Any, list[_Gated]]:
    # A NER pipeline may be a transformer one (it then needs torch); pattern recognisers never do.
    with _without(*(() if ner_model else ("torch", "transformers"))):
        import phonenumbers
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer import predefined_recognizers as predefined
        from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
        from presidio_analyzer.nlp_engine import NoOpNlpEngine, SpacyNlpEngine

    # The e-mail recogniser checks the domain with tldextract, whose default fetches the public
    # suffix list over the network on first use: use the copy bundled with the package.
    offline_tld = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())

    class OfflineEmailRecognizer(predefined.EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld(pattern_text).fqdn != ""

    class NerEngine(SpacyNlpEngine):
        """Presidio's spaCy engine on the configured pipeline, loaded here: never downloaded."""

        def load(self) -> None:
            try:
                self.nlp = {LANGUAGE: spacy.load(ner_model)}
            except OSError as exc:
                raise PiiSetupError(
                    f"snapshot.pii_ner_model {ner_model!r} cannot be loaded ({exc}); install that spaCy "
                    "pipeline package (or give the path of a saved pipeline), or unset the setting"
                ) from exc

    class NoContext(ContextAwareEnhancer):
        """Raises no score from context words: without a pipeline there are no lemmas to find
        them in, and Presidio's lemma enhancer deep-copies every result to learn that."""

        def enhance_using_context(
            self, text: str, raw_results: list[Any], *args: Any, **kwargs: Any
        ) -> list[Any]:
            return raw_results

    # Pattern recognisers need no NLP: Presidio's no-op engine skips spaCy for each text
    # (measured: a blank spaCy pipeline plus the lemma enhancer took 7 of 11 ms per call).
    engine: Any
    if ner_model is None:
        engine, enhancer = (
            NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}]),
            NoContext(0, 0, 0, 0),
        )
    else:
        engine, enhancer = NerEngine(models=[{"lang_code": LANGUAGE, "model_name": ner_model}]), None
    engine.load()

    recognizers: list[Any] = [
        OfflineEmailRecognizer(),
        predefined.CreditCardRecognizer(),
        predefined.IbanRecognizer(),
        predefined.IpRecognizer(),
        *(_strong(getattr(predefined, name)(supported_language=LANGUAGE)) for name in _NATIONAL_IDS),
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="NorthAmericanPhoneRecognizer",
            patterns=[Pattern("nanp_written", _NANP, 0.4)],
        ),
        PatternRecognizer(
            supported_entity="SECRET",
            name="RatchetSecretRecognizer",
            patterns=[Pattern(name, pattern, score) for name, pattern, score in _SECRETS],
            global_regex_flags=_CASE_SENSITIVE,
        ),
    ]
    if extra_patterns:
        patterns = []
        for i, pattern in enumerate(extra_patterns):
            try:
                regex.compile(pattern, flags=_CASE_SENSITIVE)
            except regex.error as exc:
                raise PiiSetupError(
                    f"snapshot.extra_pii_patterns[{i}] {pattern!r} is not a regex: {exc}"
                ) from exc
            patterns.append(Pattern(f"extra_{i}", pattern, 1.0))
        recognizers.append(
            PatternRecognizer(
                supported_entity="CONFIGURED_PII",
                name="ConfiguredPatternRecognizer",
                patterns=patterns,
                global_regex_flags=_CASE_SENSITIVE,
            )
        )
    gated = [_Gated(r.supported_entities, _pattern_gate(r)) for r in recognizers]

    class RegionsUntilCoveredPhoneRecognizer(predefined.PhoneRecognizer):
        """Presidio's phone recogniser, region after region as it does, but stopping once every
        run of digits that could be a number is inside one found: a `+CC` number is found by
        the first region and each further one (~1.5 ms) would only find it again."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            candidates = [m.span() for m in _PHONE_GATE.finditer(text)]
            results: list[Any] = []
            for region in self.supported_regions:
                for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=self.leniency):
                    results.append(self._get_recognizer_result(match, text, region, nlp_artifacts))
                if all(any(r.start < end and start < r.end for r in results) for start, end in candidates):
                    break
            return predefined.PhoneRecognizer.remove_duplicates(results)

    phone = RegionsUntilCoveredPhoneRecognizer(supported_regions=phone_regions, leniency=1)
    recognizers.append(phone)
    gated.append(_Gated(phone.supported_entities, _PHONE_GATE.search))
    if ner_model is not None:
        ner = predefined.SpacyRecognizer(supported_language=LANGUAGE, supported_entities=["PERSON"])
        recognizers.append(ner)
        gated.append(_Gated(["PERSON"], _ALWAYS))

    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in recognizers:
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(
        registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE], context_aware_enhancer=enhancer
    )
    return analyzer, gated


_shared: dict[tuple[Any, ...], Scrubber] = {}
_shared_lock = threading.Lock()


def scrubber_for(settings: SnapshotSettings) -> Scrubber:
    """The process's scrubber for these settings, built on first use (Presidio and spaCy load in a
    few seconds), then shared so that its cache serves every snapshot and export."""
    key = (settings.extra_pii_patterns, settings.pii_ner_model, settings.pii_phone_regions)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Scrubber(extra_patterns=key[0], ner_model=key[1], phone_regions=key[2])
        return _shared[key]


@contextmanager
def _without(*modules: str) -> Iterator[None]:
    """Make `import m` fail for each module not already imported, for the duration of the block.

    Presidio and spaCy import torch and transformers whenever they are installed (the `train`
    extra installs them), for engines Ratchet does not use: measured here, that took a pattern-only
    scrubber from ~120 MB and ~10 s to ~560 MB and ~50 s on a loaded 2-core machine.
    Process-wide while the block runs: nothing in `ratchet serve` imports either (the trainer is
    its own process), so no other thread there can trip over it."""
    blocked = [m for m in modules if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for m in blocked:
            if sys.modules.get(m) is None:
                del sys.modules[m]
