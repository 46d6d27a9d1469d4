"""`python -m trainer`: the trainer process's command line.

    python -m trainer run SPEC.json                    train one adapter (progress: JSON lines on stdout)
    python -m trainer run --artifacts URL              the same, inputs and outputs at an fsspec URL
                                                       (trainer/artifacts.py: a trainer on another machine)
    python -m trainer null-adapter --base DIR --out DIR  write a null adapter (serves exactly the base)
    python -m trainer score REWARD_DIR --input items.jsonl --output scores.jsonl
                                                       score answers with a reward model (one float each)
    python -m trainer score-server                     the same, for many requests: formats.reward.ScoreRequest
                                                       JSON lines on stdin, ScoreResponse lines on stdout, until EOF

Several GPUs, same code and spec (only the launcher changes; rank 0 reports progress and writes
the adapter):

    accelerate launch --multi_gpu --num_processes 4 -m trainer run SPEC.json

Every command but `score-server` (whose stdout carries only its responses) writes JSON lines on stdout, ending in `{"event": "done", ...}` or
`{"event": "error", "message": ..., "kind": ...}`. Exit codes: 0 done; 2 bad input (spec,
snapshot, base model, too little signal, output exists); 1 an unexpected failure (traceback on
stderr); 130 stopped by SIGTERM or SIGINT (nothing written). Human logs go to stderr. Nothing is
ever downloaded: the Hugging Face libraries are put in offline mode before they load.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from formats.run import DoneEvent, ErrorEvent
from trainer.errors import BaseModelError, SpecError, TrainerError
from trainer.progress import Progress

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _interrupt(signum, frame):
    # SIGTERM (the service cancelling a run) unwinds like Ctrl-C, so the partial adapter
    # directory is removed on the way out instead of being left behind by a hard kill.
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train one LoRA adapter from a run spec")
    run.add_argument("spec", nargs="?", help="path to SPEC.json (see formats/run.py for its fields)")
    run.add_argument(
        "--artifacts",
        help="instead of SPEC.json: the run's fsspec URL holding spec.json and its inputs; outputs go back there",
    )
    null = commands.add_parser("null-adapter", help="write a LoRA adapter whose outputs equal the base's")
    null.add_argument("--base", required=True, help="base model directory")
    null.add_argument("--out", required=True, help="adapter directory to create")
    null.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    null.add_argument(
        "--target-modules",
        nargs="+",
        default=None,
        help="module names to adapt, or all-linear (default: the architecture's, e.g. q_proj v_proj)",
    )
    score = commands.add_parser("score", help="score answers with a reward model the run trained")
    score.add_argument("reward_model", help="reward model directory (manifest kind reward_model)")
    score.add_argument(
        "--input", required=True, help='JSONL, one {"id", "messages": [chat messages], "answer"} per line'
    )
    score.add_argument("--output", required=True, help='JSONL written: one {"id", "score"} per input line')
    score.add_argument("--batch-size", type=int, default=16, help="answers per forward pass (16)")
    score.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a shared CPU box)"
    )
    server = commands.add_parser(
        "score-server", help="score requests from stdin with reward models, one response line each, until EOF"
    )
    server.add_argument("--batch-size", type=int, default=16, help="answers per forward pass (16)")
    server.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    return parser


def _run(args: argparse.Namespace, progress: Progress) -> None:
    if (args.spec is None) == (args.artifacts is None):
        raise SpecError("give either SPEC.json or --artifacts URL")
    if args.artifacts is not None:
        from trainer.artifacts import run_from

        run_from(args.artifacts, progress)
        return
    from trainer.run import run
    from trainer.spec import load_spec

    run(load_spec(args.spec), progress)


def _null_adapter(args: argparse.Namespace, progress: Progress) -> None:
    from trainer.null_adapter import write_null_adapter

    if not (Path(args.base) / "config.json").is_file():
        raise BaseModelError(f"base model directory {args.base} does not exist or has no config.json")
    try:
        path = write_null_adapter(args.base, args.out, rank=args.rank, target_modules=args.target_modules)
    except (FileExistsError, ValueError) as exc:
        raise TrainerError(str(exc)) from exc
    progress.send(DoneEvent(adapter_dir=str(path)))


def _score(args: argparse.Namespace, progress: Progress) -> None:
    import time

    from trainer.reward import score_file

    started = time.monotonic()
    count = score_file(
        args.reward_model, args.input, args.output, batch_size=args.batch_size, threads=args.threads
    )
    progress.emit("done", scored=count, output=args.output, wall_time_s=round(time.monotonic() - started, 3))


def _score_server(args: argparse.Namespace) -> None:
    from trainer.reward import serve_scores

    # Responses go to the real stdout; anything a library prints goes to stderr instead of
    # breaking the protocol.
    responses = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with responses:
        serve_scores(sys.stdin.buffer, responses, batch_size=args.batch_size, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from trainer.run import is_main_process

    progress = Progress(sys.stdout, enabled=is_main_process())
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command == "run":
            _run(args, progress)
        elif args.command == "score":
            _score(args, progress)
        elif args.command == "score-server":
            _score_server(args)
        else:
            _null_adapter(args, progress)
    except TrainerError as exc:
        progress.send(ErrorEvent(message=str(exc), kind=type(exc).__name__))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        progress.send(
            ErrorEvent(message="interrupted by a signal; no adapter was written", kind="Interrupted")
        )
        return EXIT_INTERRUPTED
    except Exception as exc:
        traceback.print_exc()
        progress.send(ErrorEvent(message=f"{type(exc).__name__}: {exc}", kind="InternalError"))
        return EXIT_FAILED
    return 0
