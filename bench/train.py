"""The trainer's wall time against a bare TRL script on the same data, model and steps, in one run.

Both run as fresh processes, interleaved, `--repeats` times each; the medians are compared:

- trainer: `python -m trainer run SPEC.json` (spec and snapshot checks, dataset building, progress
  events every step, manifest, atomic rename: everything the service pays for);
- bare: the few lines of TRL anyone would write for the same job (this file, `--bare`), reading
  the already-built rows from JSON, same model, LoRA, optimiser settings, seed and steps.

Prints the ratio (goal <= 1.10x), examples/s (end to end, and TRL's own training-loop figure) and
each process's peak RSS.

    .venv/bin/python bench/train.py [--method kto] [--steps 100] [--repeats 3] [--model DIR]

Time it with nothing else running: training and any vLLM share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.training import build_snapshot  # noqa: E402
from trainer.dataset import build_examples  # noqa: E402
from trainer.snapshot import read_snapshot  # noqa: E402
from trainer.tokens import Renderer, fit_examples  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def bare(args: argparse.Namespace) -> None:
    """The bare TRL script: what the trainer does for one method, without any of Ratchet."""
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    job = json.loads(Path(args.bare).read_text())
    hp = job["hyperparameters"]
    tokenizer = AutoTokenizer.from_pretrained(job["base_model"])
    model = AutoModelForCausalLM.from_pretrained(job["base_model"], dtype=torch.float32)
    common = {
        "output_dir": job["output_dir"],
        "learning_rate": hp["learning_rate"],
        "max_steps": hp["max_steps"],
        "per_device_train_batch_size": hp["batch_size"],
        "max_length": hp["max_length"],
        "seed": hp["seed"],
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
    }
    method = job["method"]
    if method == "kto":
        config = KTOConfig(**common, beta=hp["beta"], desirable_weight=hp["desirable_weight"])
        trainer_class = KTOTrainer
    elif method == "dpo":
        config = DPOConfig(**common, beta=hp["beta"], loss_type=hp["loss_type"])
        trainer_class = DPOTrainer
    else:
        config = SFTConfig(**common)
        trainer_class = SFTTrainer
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(job["rows"]).shuffle(seed=hp["seed"]),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=job["target_modules"], task_type="CAUSAL_LM"
        ),
    )
    result = trainer.train()
    trainer.save_model(job["output_dir"])
    print(json.dumps({"train_samples_per_second": result.metrics["train_samples_per_second"]}))


def run_measured(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run `cmd`; return its wall time and CPU time (s), its own peak RSS (bytes; wait4) and stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; run it by hand to see why")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["kto", "dpo", "sft"], default="kto")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="tiny model dir (default: build one, ~30 s)")
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: run the bare TRL script on this job
    args = parser.parse_args()
    if args.bare:
        bare(args)
        return

    with tempfile.TemporaryDirectory(prefix="ratchet-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        from transformers import AutoTokenizer

        if args.model:
            model = Path(args.model).resolve()
        else:
            from demo.tiny_model import build_tiny_model

            model = build_tiny_model(tmp / "tiny")
        snapshot = build_snapshot(tmp / "snap")
        # The rows the trainer hands TRL: built, rendered and fitted as the trainer does.
        renderer = Renderer(AutoTokenizer.from_pretrained(model, local_files_only=True))
        examples = fit_examples(build_examples(read_snapshot(snapshot).train), renderer, 512)
        rows = [{k: v for k, v in e.trl.items() if k != "tools"} for e in examples.of(args.method)]

        results: dict[str, list[tuple[float, float, int, float]]] = {"trainer": [], "bare": []}
        for i in range(args.repeats):
            out = tmp / f"trainer-{i}"
            spec = tmp / f"SPEC-{i}.json"
            spec.write_text(
                json.dumps(
                    {
                        "run_id": f"bench-{i}",
                        "base_model": str(model),
                        "snapshot_dir": str(snapshot),
                        "output_dir": str(out),
                        "method": args.method,
                        "optim": {"max_steps": args.steps},
                    }
                )
            )
            wall, cpu, rss, stdout = run_measured([sys.executable, "-m", "trainer", "run", str(spec)])
            done = json.loads(stdout.splitlines()[-1])
            results["trainer"].append((wall, cpu, rss, done["metrics"]["train_samples_per_second"]))
            manifest = json.loads((out / "manifest.json").read_text())

            job = tmp / f"bare-{i}.json"
            job.write_text(
                json.dumps(
                    {
                        "base_model": str(model),
                        "output_dir": str(tmp / f"bare-{i}"),
                        "method": manifest["method"],
                        "hyperparameters": manifest["hyperparameters"],
                        "target_modules": manifest["lora"]["target_modules"],
                        "rows": rows,
                    }
                )
            )
            wall, cpu, rss, stdout = run_measured(
                [sys.executable, str(Path(__file__).resolve()), "--bare", str(job)]
            )
            loop = json.loads(stdout.splitlines()[-1])["train_samples_per_second"]
            results["bare"].append((wall, cpu, rss, loop))
            print(
                f"repeat {i + 1}: trainer {results['trainer'][-1][0]:.1f} s, bare {results['bare'][-1][0]:.1f} s",
                file=sys.stderr,
            )

    batch = manifest["hyperparameters"]["batch_size"]
    print(
        f"method {args.method}, {args.steps} steps of batch {batch}, tiny model, {args.repeats} repeats each"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    wall, cpu = {}, {}
    for name, runs in results.items():
        wall[name] = statistics.median(r[0] for r in runs)
        cpu[name] = statistics.median(r[1] for r in runs)
        print(
            f"{name:8s} wall {wall[name]:6.2f} s (runs: {', '.join(f'{r[0]:.2f}' for r in runs)})  "
            f"CPU {cpu[name]:6.2f} s  end-to-end {args.steps * batch / wall[name]:6.1f} examples/s  "
            f"training loop {statistics.median(r[3] for r in runs):6.1f} examples/s  "
            f"peak RSS {max(r[2] for r in runs) / 2**20:6.0f} MiB"
        )
    ratio = wall["trainer"] / wall["bare"]
    print(f"ratio trainer / bare TRL, wall: {ratio:.3f}x (goal <= 1.10x) {'OK' if ratio <= 1.10 else 'OVER'}")
    # On a shared machine wall time swings with other load; CPU time shows the trainer's own cost.
    print(f"ratio trainer / bare TRL, CPU:  {cpu['trainer'] / cpu['bare']:.3f}x")


if __name__ == "__main__":
    main()
