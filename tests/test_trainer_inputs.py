"""Bad input to `python -m trainer run`: an error naming the problem, exit 2, no adapter left behind.

Every check here happens before the training stack is imported, so each run takes well under a
second; the base model is a directory with a config.json that is never loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.snapshot import SnapshotFile, file_sha256, snapshot_sha256
from tests.fixtures.training import build_snapshot, write_spec

REPO = Path(__file__).resolve().parents[1]


def run_trainer(*args: str, cwd: Path = REPO) -> tuple[int, list[dict], str]:
    """Run `python -m trainer ...`; return the exit code, the stdout events and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds nothing but events
    return proc.returncode, events, proc.stderr


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    snapshot = build_snapshot(tmp_path / "snap", n_train=120, n_holdout=20)
    return {
        "run_id": "bad-input",
        "base_model": str(base),
        "snapshot_dir": str(snapshot),
        "output_dir": str(tmp_path / "out" / "tiny@v1"),
    }


def fails(tmp_path: Path, spec: dict, message: str, *, kind: str) -> None:
    """The run exits 2 with one error event matching `message` and leaves no directory in out/."""
    code, events, stderr = run_trainer("run", str(write_spec(tmp_path / "SPEC.json", **spec)))
    assert code == 2, stderr
    assert len(events) == 1, events
    assert events[0]["event"] == "error"
    assert events[0]["kind"] == kind
    assert message in events[0]["message"], events[0]["message"]
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []  # neither the adapter nor a partial dir


def manifest(setup: dict) -> tuple[Path, dict]:
    path = Path(setup["snapshot_dir"]) / "manifest.json"
    return path, json.loads(path.read_text())


def test_missing_snapshot_dir(tmp_path, setup):
    fails(
        tmp_path,
        {**setup, "snapshot_dir": str(tmp_path / "nope")},
        "nope does not exist",
        kind="SnapshotError",
    )


def test_missing_manifest(tmp_path, setup):
    (Path(setup["snapshot_dir"]) / "manifest.json").unlink()
    fails(tmp_path, setup, "no readable manifest.json", kind="SnapshotError")


def test_manifest_not_json(tmp_path, setup):
    (Path(setup["snapshot_dir"]) / "manifest.json").write_text("{not json")
    fails(tmp_path, setup, "manifest.json is not a JSON object", kind="SnapshotError")


def test_manifest_of_another_schema_version(tmp_path, setup):
    path, m = manifest(setup)
    path.write_text(json.dumps({**m, "schema_version": 1}))
    fails(tmp_path, setup, "schema_version 1; this reader reads 2", kind="SnapshotError")


def test_missing_parquet_file(tmp_path, setup):
    (Path(setup["snapshot_dir"]) / "holdout.parquet").unlink()
    fails(tmp_path, setup, "holdout.parquet is missing", kind="SnapshotError")


def test_changed_file_fails_its_sha256(tmp_path, setup):
    train = Path(setup["snapshot_dir"]) / "train.parquet"
    table = pq.read_table(train)
    pq.write_table(table.slice(0, table.num_rows - 1), train)
    fails(tmp_path, setup, "train.parquet does not match the manifest", kind="SnapshotError")


def test_row_count_differs_from_manifest(tmp_path, setup):
    path, m = manifest(setup)
    m["files"]["train.parquet"]["rows"] += 1
    path.write_text(json.dumps(m))
    fails(tmp_path, setup, "train.parquet has 120 rows; the manifest says 121", kind="SnapshotError")


def rewrite_train(setup: dict, table: pa.Table) -> None:
    """Replace train.parquet and re-sign the manifest, so only the content is wrong."""
    train = Path(setup["snapshot_dir"]) / "train.parquet"
    pq.write_table(table, train)
    path, m = manifest(setup)
    m["files"]["train.parquet"] = {"rows": table.num_rows, "sha256": file_sha256(train)}
    files = {name: SnapshotFile(**entry) for name, entry in m["files"].items()}
    m["sha256"] = snapshot_sha256(files)
    path.write_text(json.dumps(m))


def test_missing_columns(tmp_path, setup):
    table = pq.read_table(Path(setup["snapshot_dir"]) / "train.parquet")
    rewrite_train(setup, table.drop_columns(["prompt", "completion"]))
    fails(tmp_path, setup, "lacks column(s) prompt, completion", kind="SnapshotError")


def test_rows_that_do_not_decode_are_left_out_and_counted_not_fatal(tmp_path, setup):
    """One bad row never costs the others: it is left out, and the counts say so."""
    table = pq.read_table(Path(setup["snapshot_dir"]) / "train.parquet")
    prompts = table.column("prompt").to_pylist()
    prompts[3] = '[{"role": "user", "content": ["not", "text"]}]'
    prompts[4] = "not json"
    ratings = table.column("rating").to_pylist()
    ratings[5] = 3
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts))
    table = table.set_column(table.schema.get_field_index("rating"), "rating", pa.array(ratings, pa.int8()))
    rewrite_train(setup, table)
    # The run reads on; what it says when the signal is too small shows what was left out.
    fails(
        tmp_path,
        {**setup, "min_examples": 10_000},
        "left out: bad_rating 1, unreadable 2",
        kind="NotEnoughSignalError",
    )


def test_missing_base_model_dir(tmp_path, setup):
    fails(
        tmp_path,
        {**setup, "base_model": str(tmp_path / "no-model")},
        "no-model does not exist",
        kind="BaseModelError",
    )


def test_missing_parent_adapter(tmp_path, setup):
    spec = {**setup, "parent_adapter": str(tmp_path / "gone")}
    fails(tmp_path, spec, "parent adapter", kind="BaseModelError")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"learning_rate": 1e-3}, "unknown field `learning_rate`"),
        ({"optim": {"max_step": 10}}, "unknown field `max_step` - at `$.optim`"),
        ({"method": "ppo"}, "Invalid enum value 'ppo' - at `$.method`"),
        ({"optim": {"learning_rate": -1}}, "Expected `float` > 0.0 - at `$.optim.learning_rate`"),
    ],
    ids=["unknown-top-level", "unknown-nested", "bad-method", "out-of-range"],
)
def test_bad_spec_fields(tmp_path, setup, extra, message):
    fails(tmp_path, {**setup, **extra}, message, kind="SpecError")


def test_a_spec_of_a_newer_version_is_refused_as_such(tmp_path, setup):
    # A newer service's spec, with a field this trainer does not know: the version is named,
    # not the field (the old trainer reported "unknown field `curriculum`").
    spec = {**setup, "schema_version": 2, "curriculum": "easy-first"}
    fails(tmp_path, spec, "has schema_version 2; this version of Ratchet reads 1", kind="SpecError")


def test_spec_missing_a_required_field(tmp_path, setup):
    spec = {k: v for k, v in setup.items() if k != "base_model"}
    fails(tmp_path, spec, "missing required field `base_model`", kind="SpecError")


def test_spec_not_json(tmp_path):
    (tmp_path / "SPEC.json").write_text("method: kto")
    code, events, _ = run_trainer("run", str(tmp_path / "SPEC.json"))
    assert code == 2
    assert events[0]["kind"] == "SpecError" and "not valid JSON" in events[0]["message"]


def test_too_little_signal_for_the_chosen_method(tmp_path, setup):
    fails(
        tmp_path,
        {**setup, "method": "dpo", "min_examples": 500},
        "too little signal for DPO",
        kind="NotEnoughSignalError",
    )


def test_too_little_signal_for_any_method(tmp_path, setup):
    fails(
        tmp_path,
        {**setup, "min_examples": 10_000},
        "too little signal for any method",
        kind="NotEnoughSignalError",
    )


def test_existing_output_dir_is_never_overwritten(tmp_path, setup):
    out = Path(setup["output_dir"])
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    code, events, _ = run_trainer("run", str(write_spec(tmp_path / "SPEC.json", **setup)))
    assert code == 2
    assert events[0]["kind"] == "OutputExistsError"
    assert [p.name for p in out.iterdir()] == ["adapter_config.json"]


def test_relative_paths_are_taken_from_the_working_directory(tmp_path, setup):
    """As for any command: the service starts the trainer in its own cwd and writes paths like ./data/..."""
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    spec = {**setup, "snapshot_dir": os.path.relpath(setup["snapshot_dir"], tmp_path), "min_examples": 10_000}
    code, events, _ = run_trainer("run", str(write_spec(run_dir / "SPEC.json", **spec)), cwd=tmp_path)
    assert code == 2
    assert events[0]["kind"] == "NotEnoughSignalError"  # i.e. the snapshot was found and read
