"""The README's configuration and CLI reference, generated from the code (a test keeps it in sync).

python -m service.reference > /tmp/ref.md   # then paste between the README's markers
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from service.cli import build_parser
from service.config import Settings

BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"


def _settings_rows(struct: type, prefix: str = "") -> list[str]:
    (schema,), defs = msgspec.json.schema_components([struct], ref_template="{name}")
    return _rows(defs[schema["$ref"]], defs, prefix)


def _rows(schema: dict[str, Any], defs: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
        if ref is not None and "properties" in defs[ref]:
            rows += _rows(defs[ref], defs, f"{prefix}{name}__")
            continue
        doc = prop.get("description") or next(
            (a.get("description") for a in prop.get("anyOf", []) if a.get("description")), ""
        )
        shown = msgspec.json.encode(prop["default"]).decode() if prop.get("default") is not None else "unset"
        rows.append(f"| `RATCHET_{(prefix + name).upper()}` | `{shown}` | {doc} |")
    return rows


def _cli_rows(parser: argparse.ArgumentParser, prefix: str = "ratchet") -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if not actions or not actions[0].required:  # a command of its own (`ratchet runs`)
                    usage = " ".join(
                        a.option_strings[0] if a.option_strings else a.dest.upper()
                        for a in sub._actions
                        if a.dest != "help" and a not in actions and (a.required or not a.option_strings)
                    )
                    summary = (sub.description or "").strip().splitlines()[0]
                    rows.append(f"| `{prefix} {name}{' ' + usage if usage else ''}` | {summary} |")
                if actions:
                    rows += _cli_rows(sub, f"{prefix} {name}")
    return rows


def render() -> str:
    """The Markdown between the README's reference markers."""
    return "\n".join(
        [
            BEGIN,
            "### Settings",
            "",
            "Every setting can go in a TOML file (`RATCHET_CONFIG=ratchet.toml`, nested tables for the",
            "`a__b` names) or an environment variable; the environment wins.",
            "",
            "| variable | default | meaning |",
            "|---|---|---|",
            *_settings_rows(Settings),
            "",
            "### CLI",
            "",
            "| command | what it does |",
            "|---|---|",
            *_cli_rows(build_parser()),
            END,
        ]
    )


if __name__ == "__main__":
    print(render())
