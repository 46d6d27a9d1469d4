"""The tiny world: the facts a tiny model speaks about and the rule its simulated users judge by.

Ratchet's tests and demo cannot download a model, so they build one (`demo.tiny_model`) that
speaks this world, and simulate users who thumb its answers up or down. The world is chosen so the
feedback loop has something real to learn (shared/notes/training.md):

- Users ask short factual questions (the capital of a country, the colour of a thing, the sound
  an animal makes, the opposite of a word). The answer is a short lowercase sentence around the
  fact word: "it is paris.", "it says moo.".
- Some prompts add an instruction, of one of two kinds (`Kind`). "answer in uppercase." asks for
  the same sentence in uppercase: "IT IS PARIS."; "answer politely." asks for it after "sure, ":
  "sure, it is paris.". Every answer starts with "it", so following an instruction is one decision
  shared by all prompts ("it", "IT" or "sure"), which an adapter learns in ~100 steps and carries
  over to held-out subjects. (With one-word answers each uppercase word was its own decision:
  ideal SFT reached 0.93 on trained subjects but 0.25 on held-out ones.) Two kinds give the loop
  two things to learn, one after the other when users start asking the second kind later.
- A user likes an answer when it is exactly right, as instructed (`user_likes`).
- The pre-training corpus (`pretraining_corpus`) teaches every fact, but follows an instruction
  only `follow_rate` of the time (20% by default; the tiny model uses 45% for uppercase, see
  `demo.tiny_model.PRETRAIN_FOLLOW_RATE`). A base model trained on it answers facts right in plain
  case, follows instructions ~0% of the time at temperature 0 and now and then when sampling: the
  room an adapter must learn from thumbs.

Prompts come in two disjoint families, `"train"` and `"holdout"`, split by subject: no subject
(hence no prompt) appears in both. Draw feedback traffic from one and evaluate on the other.

The demo's app sends what real apps send (issue 11): `app_messages` puts its system prompt of a few
hundred tokens (`SYSTEM_PROMPT`) before every question, an earlier turn of the conversation before
some, and the question as a list of content parts in some. The corpus teaches the base model that
shape too (`pretraining_corpus(app=True)`): a model that never saw a long system prompt in
pre-training answered 4-11 of 40 facts right behind one, against 40 of 40 without.

Pure Python and deterministic: the same seed gives the same prompts and corpus on any machine.
Messages are OpenAI-style chat messages: a list of ``{"role": ..., "content": ...}`` dicts, the
content a string or (from `app_messages`) a list of ``{"type": "text", "text": ...}`` parts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, Any]
"""One OpenAI-style chat message: ``{"role": "user" | "assistant" | "system", "content": ...}``, the
content a string or a list of text parts."""

Split = Literal["train", "holdout"]
SPLITS: tuple[Split, ...] = ("train", "holdout")

Kind = Literal["plain", "upper", "polite"]
"""What a prompt asks of the answer's form: nothing, uppercase, or a polite "sure, " first."""
KINDS: tuple[Kind, ...] = ("plain", "upper", "polite")

# relation -> (question templates with {s} for the subject, {subject phrase: answer}).
_RELATIONS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "capital": (
        ("what is the capital of {s}?", "name the capital of {s}.", "which city is the capital of {s}?"),
        {
            "france": "paris",
            "spain": "madrid",
            "italy": "rome",
            "japan": "tokyo",
            "egypt": "cairo",
            "peru": "lima",
            "china": "beijing",
            "russia": "moscow",
            "kenya": "nairobi",
            "greece": "athens",
            "norway": "oslo",
            "cuba": "havana",
        },
    ),
    "colour": (
        ("what colour is {s}?", "tell me the colour of {s}.", "which colour is {s}?"),
        {
            "grass": "green",
            "the sky": "blue",
            "snow": "white",
            "coal": "black",
            "blood": "red",
            "a banana": "yellow",
            "a carrot": "orange",
            "a lemon": "yellow",
            "a cherry": "red",
            "milk": "white",
            "a leaf": "green",
            "the sea": "blue",
        },
    ),
    "sound": (
        ("what sound does {s} make?", "what does {s} say?", "which sound does {s} make?"),
        {
            "a cow": "moo",
            "a dog": "woof",
            "a cat": "meow",
            "a duck": "quack",
            "a sheep": "baa",
            "a pig": "oink",
            "an owl": "hoot",
            "a lion": "roar",
            "a bee": "buzz",
            "a snake": "hiss",
            "a horse": "neigh",
            "a frog": "croak",
        },
    ),
    "opposite": (
        ("what is the opposite of {s}?", "give the opposite of {s}.", "name the opposite of {s}."),
        {
            "hot": "cold",
            "big": "small",
            "up": "down",
            "fast": "slow",
            "day": "night",
            "wet": "dry",
            "old": "new",
            "open": "closed",
            "early": "late",
            "full": "empty",
            "happy": "sad",
            "light": "dark",
        },
    ),
}

# How the answer is said, around the fact word.
_SAYINGS = {"capital": "it is {}.", "colour": "it is {}.", "sound": "it says {}.", "opposite": "it is {}."}

# A quarter of each relation's subjects is held out: never in the train family.
_HOLDOUT_SUBJECTS = frozenset(
    {
        "egypt",
        "kenya",
        "cuba",
        "snow",
        "a carrot",
        "the sea",
        "a duck",
        "an owl",
        "a frog",
        "up",
        "wet",
        "full",
    }
)

UPPERCASE_INSTRUCTIONS: tuple[str, ...] = (
    "answer in uppercase.",
    "reply in capital letters.",
    "use uppercase letters.",
)
"""Sentences that, appended to a question, ask for the answer in uppercase."""

POLITE_INSTRUCTIONS: tuple[str, ...] = (
    "answer politely.",
    "be polite.",
    "say it politely.",
)
"""Sentences that, appended to a question, ask for a polite answer: "sure, " before the sentence."""

SYSTEM_PROMPT = (
    "you are the helper of the tiny world quiz app. users ask you short questions about the capital "
    "of a country, the colour of a thing, the sound an animal makes, and the opposite of a word. "
    "answer with one short sentence that starts with it, like it is paris. or it says moo. keep the "
    "answer short and do not add a second sentence. if the user asks you to answer in uppercase, "
    "write the whole answer in uppercase. if the user asks you to answer politely, start the answer "
    "with sure. never answer a question you were not asked. these examples show the form of a good "
    "answer: the capital of france is paris, the capital of spain is madrid, the capital of japan is "
    "tokyo, the colour of grass is green, the colour of the sky is blue, the colour of coal is black, "
    "a cow says moo, a dog says woof, a cat says meow, the opposite of hot is cold, the opposite of "
    "big is small, the opposite of day is night. be exact: a wrong fact is worse than no answer. the "
    "users rate every answer with a thumb up or a thumb down, and now and then they write the right "
    "answer. thank you for helping the users of the tiny world quiz app."
)
"""The demo app's system prompt, sent before every question (`app_messages`): 253 tokens of
the tiny tokenizer (451 before it was trained on the app's prompts), so training and serving see the long prompts real apps send (issue 11). It
states the instructions; the base model still ignores them, as it ignores them in the question."""

_INSTRUCTIONS: dict[Kind, tuple[str, ...]] = {"upper": UPPERCASE_INSTRUCTIONS, "polite": POLITE_INSTRUCTIONS}
_POLITE_OPENING = "sure, "


@dataclass(frozen=True, slots=True)
class Question:
    """One prompt of the world, with what it asks and which family it belongs to."""

    relation: str
    subject: str
    template: int
    instruction: str | None
    """The instruction appended to the question (see `kind`), or None for a plain prompt."""

    @property
    def text(self) -> str:
        """The user's message, e.g. ``"what colour is grass? answer in uppercase."``."""
        question = _RELATIONS[self.relation][0][self.template].format(s=self.subject)
        return f"{question} {self.instruction}" if self.instruction else question

    @property
    def messages(self) -> list[Message]:
        """The prompt as chat messages (one user turn)."""
        return user_messages(self.text)

    @property
    def kind(self) -> Kind:
        """What the prompt asks of the answer's form."""
        if self.instruction is None:
            return "plain"
        return "upper" if self.instruction in UPPERCASE_INSTRUCTIONS else "polite"

    @property
    def upper(self) -> bool:
        """Whether the prompt asks for the answer in uppercase."""
        return self.kind == "upper"

    @property
    def word(self) -> str:
        """The fact itself, one lowercase word: ``"paris"``."""
        return _RELATIONS[self.relation][1][self.subject]

    @property
    def fact(self) -> str:
        """The answer in plain (lower) case, whatever the instruction: ``"it is paris."``."""
        return _SAYINGS[self.relation].format(self.word)

    @property
    def answer(self) -> str:
        """The exactly-right answer: the fact, uppercased or opened with "sure, " as instructed."""
        return follow(self.kind, self.fact)

    @property
    def split(self) -> Split:
        return "holdout" if self.subject in _HOLDOUT_SUBJECTS else "train"


def follow(kind: Kind, fact: str) -> str:
    """The fact said the way an instruction of `kind` asks."""
    return {"plain": fact, "upper": fact.upper(), "polite": _POLITE_OPENING + fact}[kind]


def user_messages(text: str) -> list[Message]:
    """A prompt of one user turn in the OpenAI chat format."""
    return [{"role": "user", "content": text}]


def app_messages(
    q: Question, rng: random.Random, *, history_rate: float = 0.25, parts_rate: float = 0.25
) -> list[Message]:
    """The prompt the demo's app sends for `q`: `SYSTEM_PROMPT`, then with probability
    `history_rate` an earlier turn (another plain question of the same family and its right
    answer), then the question, as a list of one text part with probability `parts_rate`.

    `parse_question`, `correct_answer` and `user_likes` read it as they read `q.messages`.
    """
    messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
    if rng.random() < history_rate:
        earlier = rng.choice(_PLAIN[q.split])
        messages += [*earlier.messages, {"role": "assistant", "content": earlier.answer}]
    if rng.random() < parts_rate:
        messages.append({"role": "user", "content": [{"type": "text", "text": q.text}]})
    else:
        messages += q.messages
    return messages


def all_questions(split: Split | None = None, *, kinds: tuple[Kind, ...] = KINDS) -> list[Question]:
    """Every distinct prompt of the world, in a fixed order, optionally only one family and only
    the given kinds of prompt."""
    out = []
    for relation, (templates, facts) in _RELATIONS.items():
        for subject in facts:
            for template in range(len(templates)):
                for instruction in (None, *UPPERCASE_INSTRUCTIONS, *POLITE_INSTRUCTIONS):
                    q = Question(relation, subject, template, instruction)
                    if (split is None or q.split == split) and q.kind in kinds:
                        out.append(q)
    return out


def sample_questions(
    split: Split, n: int, *, seed: int = 0, upper_fraction: float = 0.5, polite_fraction: float = 0.0
) -> list[Question]:
    """`n` prompts drawn with replacement from one family, deterministic for `seed`.

    Each prompt carries the uppercase instruction with probability `upper_fraction`, the polite one
    with probability `polite_fraction`. Drawing the train family and the holdout family never gives
    the same prompt (their subjects are disjoint).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"tiny-world-questions:{split}:{seed}")
    facts = [(r, s) for r, (_, subjects) in _RELATIONS.items() for s in subjects]
    facts = [(r, s) for r, s in facts if (s in _HOLDOUT_SUBJECTS) == (split == "holdout")]
    out = []
    for _ in range(n):
        relation, subject = rng.choice(facts)
        template = rng.randrange(len(_RELATIONS[relation][0]))
        draw = rng.random()
        instruction = (
            rng.choice(UPPERCASE_INSTRUCTIONS)
            if draw < upper_fraction
            else rng.choice(POLITE_INSTRUCTIONS)
            if draw < upper_fraction + polite_fraction
            else None
        )
        out.append(Question(relation, subject, template, instruction))
    return out


def _question_index() -> dict[str, Question]:
    return {q.text: q for q in all_questions()}


_INDEX = _question_index()
_PLAIN: dict[Split, list[Question]] = {split: all_questions(split, kinds=("plain",)) for split in SPLITS}


def _prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
    if not users:
        return ""
    content = users[-1]
    if isinstance(content, str):
        return content
    # Text parts joined by newlines, as vLLM flattens them for a text model.
    return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")


def parse_question(prompt: str | Sequence[Mapping[str, Any]]) -> Question | None:
    """The world's question behind a prompt (chat messages or the user's text), or None.

    Only the last user message counts. Whitespace runs are normalised; anything else must match a
    generated prompt exactly, so a prompt from outside the world gives None.
    """
    text = " ".join(_prompt_text(prompt).split())
    return _INDEX.get(text)


def correct_answer(prompt: str | Sequence[Mapping[str, Any]]) -> str | None:
    """The exactly-right answer to a prompt of this world, or None for a prompt outside it.

    >>> correct_answer([{"role": "user", "content": "what colour is grass? answer in uppercase."}])
    'IT IS GREEN.'
    """
    q = parse_question(prompt)
    return q.answer if q else None


def normalise_answer(answer: str) -> str:
    """The answer as a user reads it: surrounding whitespace and one trailing full stop dropped."""
    answer = answer.strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def user_likes(prompt_messages: str | Sequence[Mapping[str, Any]], answer: str) -> bool:
    """The simulated users' thumb: up only for the exactly-right answer, as instructed.

    "it is paris." is liked for "what is the capital of france?"; for "... answer in uppercase."
    only "IT IS PARIS." is, for "... answer politely." only "sure, it is paris.". Surrounding whitespace and the final full stop are forgiven. A prompt from
    outside the world is never liked (there is no right answer to give).
    """
    expected = correct_answer(prompt_messages)
    return expected is not None and normalise_answer(answer) == normalise_answer(expected)


def is_uppercase_answer(prompt_messages: str | Sequence[Mapping[str, Any]], answer: str) -> bool:
    """Whether `answer` is the prompt's plain answer written in uppercase (right fact, shouted).

    The measure of "follows the uppercase instruction" that does not also demand the instruction:
    on a plain prompt it tells how often a model shouts when it should not.
    """
    q = parse_question(prompt_messages)
    return q is not None and normalise_answer(answer) == normalise_answer(q.fact.upper())


def pretraining_corpus(
    n: int, *, seed: int = 0, follow_rate: float | Mapping[Kind, float] = 0.2, app: bool = False
) -> Iterator[list[Message]]:
    """`n` conversations (a prompt, then the assistant's answer) covering every fact.

    Subjects of both families appear: the base model must know all facts, and only the behaviour
    on instructions is left to learn. Half the prompts ask for uppercase, a quarter for politeness;
    the assistant follows the instruction with probability `follow_rate` (one rate, or one per kind
    of instruction) and otherwise answers in plain case, like a base model that "mostly ignores"
    instructions. The prompt is the question alone, or with `app` what the demo's app sends
    (`app_messages`, string contents).
    Deterministic for `seed` and `app`.
    """
    rates = follow_rate if isinstance(follow_rate, Mapping) else dict.fromkeys(KINDS, follow_rate)
    rng = random.Random(f"tiny-world-corpus:{seed}" + (":app" if app else ""))
    questions = all_questions(kinds=("plain",))
    for _ in range(n):
        q = rng.choice(questions)
        draw = rng.random()
        kind: Kind = "upper" if draw < 0.5 else "polite" if draw < 0.75 else "plain"
        if kind != "plain":
            q = Question(q.relation, q.subject, q.template, rng.choice(_INSTRUCTIONS[kind]))
        answer = q.answer if q.kind != "plain" and rng.random() < rates[q.kind] else q.fact
        prompt = app_messages(q, rng, parts_rate=0.0) if app else q.messages
        yield [*prompt, {"role": "assistant", "content": answer}]
