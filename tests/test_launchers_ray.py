"""The `ray` trainer launcher against a real Ray cluster started on loopback for this module (`ray
start --head --block`, a temporary directory, 2 CPUs, the dashboard's Jobs API on 127.0.0.1): a
real `ratchet serve` submits its runs there through Ray's own Jobs client, their inputs and
adapters moving through a shared artifact location (a file:// URL). A trained adapter is served
and promoted as a `local` run's; a Ray job stopped mid-run fails its run, nothing left behind; a run
cancelled in Ratchet stops its Ray job; once
the cluster is gone, a run fails naming the address it could not reach, serving untouched.

The cluster is stopped by ending its `ray start --block` (which stops the node's processes it
started), not `ray stop`, which stops every Ray process of the machine's user.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.fixtures.server import RatchetProcess, free_port, wait_for
from tests.test_fine_tuning_api import answered_by, client, finished, jsonl, tiny_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    def __init__(self, address: str, proc: subprocess.Popen[bytes]) -> None:
        self.address = address
        self.proc = proc

    @functools.cached_property
    def jobs(self) -> JobSubmissionClient:
        return JobSubmissionClient(self.address)

    def stop(self) -> None:
        """End `ray start --block`, which stops the node's processes (SIGKILL to its group after 60 s)."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def ray_logs(temp: Path) -> str:
    """What `ray start` printed, and the tail of each dashboard log that reports an error: a
    dashboard module that dies says why only in its own log under the session directory."""
    parts = [f"ray start:\n{(temp / 'ray-start.log').read_text(errors='replace')[-3000:]}"]
    for log in sorted(temp.glob("session_*/logs/dashboard*")):
        text = log.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            parts.append(f"{log.name}:\n{text[-3000:]}")
    return "\n\n".join(parts)


def start_ray(temp: Path) -> RayCluster | str:
    """A one-node cluster in `temp` with its Jobs API up, or, if it died or took over 180 s to
    start, why (`ray_logs`), with nothing of it left running."""
    dashboard = free_port()
    started = time.monotonic()
    with open(temp / "ray-start.log", "wb") as log:
        proc = subprocess.Popen(
            [
                RAY, "start", "--head", "--block", f"--temp-dir={temp}", "--num-cpus=2", "--num-gpus=0",
                "--node-ip-address=127.0.0.1", f"--port={free_port()}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                "--disable-usage-stats",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    cluster = RayCluster(f"http://127.0.0.1:{dashboard}", proc)

    def up_or_exited() -> str | None:
        if proc.poll() is not None:
            return f"exited {proc.returncode}"
        try:
            return "up" if httpx.get(f"{cluster.address}/api/version", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        state = wait_for(up_or_exited, 180, "the Ray dashboard")
    except AssertionError:
        state = "not up in 180 s"
    if state == "up":
        print(f"Ray cluster up in {time.monotonic() - started:.1f}s")
        return cluster
    cluster.stop()
    return f"the Ray cluster did not start ({state}):\n{ray_logs(temp)}"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # Not under pytest's base temp: Ray puts AF_UNIX sockets in its --temp-dir
    # (`<temp>/session_<date>_<time>_<usec>_<pid>/sockets/dash_<Module>`, at most 107 bytes), and on
    # CI (`/tmp/pytest-of-root/pytest-22/popen-gw1/ray0/`) the MetricsHead socket's path was 109
    # bytes: its dashboard module died on it ('AF_UNIX path length cannot exceed 107 bytes',
    # reported to `ray start` only as 'Received EOF from pipe') on every try. `/tmp/ray-XXXXXXXX/`
    # leaves about 20 bytes to spare.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp", ignore_cleanup_errors=True) as temp:
        cluster = start_ray(Path(temp))
        if not isinstance(cluster, RayCluster):
            pytest.fail(cluster)
        try:
            yield cluster
        finally:
            cluster.stop()


def ray_env(cluster_address: str, artifacts: Path) -> dict[str, str]:
    """The launcher settings as an operator gives them: the job's runtime_env brings this
    checkout's code and the offline switches to the trainer."""
    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "OMP_NUM_THREADS": "1"}}  # fmt: skip
    return {
        "RATCHET_TRAINING__LAUNCHER": "ray",
        "RATCHET_LAUNCHER__RAY_ADDRESS": cluster_address,
        "RATCHET_LAUNCHER__RAY_PYTHON": sys.executable,
        "RATCHET_LAUNCHER__RAY_RUNTIME_ENV": json.dumps(runtime_env),
        "RATCHET_LAUNCHER__ARTIFACTS_URL": f"file://{artifacts}",
    }


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, vllm_server: Any, tiny_model_dir: Path, ray_cluster: RayCluster
) -> Iterator[tuple[RatchetProcess, str, Path]]:
    root = tmp_path_factory.mktemp("ray-served")
    env = {
        "RATCHET_VLLM__URLS": f'["{vllm_server.base_url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": vllm_server.model_name,
        "RATCHET_VLLM__BASE_MODEL": str(tiny_model_dir),
        "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "3600",
        **ray_env(ray_cluster.address, root / "artifacts"),
    }
    server = RatchetProcess(root / "data", env=env).start()
    try:
        yield server, server.create_project("onray"), root / "artifacts"
    finally:
        server.stop()
        vllm_server.unload_adapters("onray")


def test_runs_on_ray_train_and_are_promoted_stop_with_their_job_and_fail_once_it_is_gone(
    served: tuple[RatchetProcess, str, Path], ray_cluster: RayCluster
) -> None:
    server, key, artifacts = served
    api = client(server, key)
    train = api.files.create(file=("sft.jsonl", jsonl(tiny_rows(16))), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(
        model="onray", training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
    )  # fmt: skip
    done = finished(api, job.id)
    assert done.status == "succeeded", (done.error, server.log_tail())
    version = done.fine_tuned_model or ""
    ray_jobs = {j.submission_id: j for j in ray_cluster.jobs.list_jobs()}
    (trained,) = [j for j in ray_jobs.values() if j.submission_id.startswith("ratchet-onray-")]
    assert trained.status == JobStatus.SUCCEEDED
    assert trained.entrypoint.split()[1:5] == ["-m", "trainer", "run", "--artifacts"]
    run = httpx.get(f"{server.url}/v1/runs/{trained.submission_id.removeprefix('ratchet-onray-')}",
                    headers={"Authorization": f"Bearer {key}"}).json()  # fmt: skip
    assert run["stats"]["progress"]["step"] == run["stats"]["progress"]["total_steps"] == 2, run
    # The adapter came back from the artifact location into the service's own directory, with
    # the trainer's manifest; the run's place there is gone.
    adapter_dir = server.data_dir / "adapters" / "onray"
    trained_dir = adapter_dir / trained.submission_id.removeprefix("ratchet-onray-")
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in trained_dir.iterdir()
    }
    assert [p.name for p in artifacts.rglob("*")] == ["onray"]
    # Served by name, and promoted by hand as any run's adapter: the alias now answers with it.
    assert answered_by(api, version) == version
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}) as admin:
        r = admin.post(f"/v1/adapters/{version}/promote")
        assert r.status_code == 200, r.text
        assert admin.get("/v1/projects/onray/rollout").json()["champion"] == version
    assert answered_by(api, "onray") == version

    # A Ray job stopped mid-run (by an operator, or the cluster): its run fails cleanly.
    going, run = training_on_ray(server, key, train.id, ray_cluster)
    submission = f"ratchet-onray-{run['id']}"
    assert ray_cluster.jobs.stop_job(submission)
    stopped = finished(api, going, timeout=120)
    assert stopped.status == "failed", stopped
    assert stopped.error is not None and f"Ray job {submission} was stopped" in stopped.error.message
    assert not (adapter_dir / run["id"]).exists()
    wait_for(lambda: [p.name for p in artifacts.rglob("*")] == ["onray"], 30, "the run's place to go")
    assert answered_by(api, "onray") == version  # serving untouched

    # A run cancelled in Ratchet stops its Ray job, as it stops a local trainer (here as soon as
    # the job runs: its trainer still importing, or training).
    going, run = training_on_ray(server, key, train.id, ray_cluster, progress=False)
    assert api.fine_tuning.jobs.cancel(going).status == "cancelled"
    submission = f"ratchet-onray-{run['id']}"
    wait_for(lambda: ray_cluster.jobs.get_job_status(submission) == JobStatus.STOPPED, 60, "the job to stop")
    assert not (adapter_dir / run["id"]).exists()
    wait_for(lambda: [p.name for p in artifacts.rglob("*")] == ["onray"], 30, "the run's place to go")

    # The cluster gone: the next run fails naming the address it could not reach; serving untouched.
    ray_cluster.stop()
    after = api.fine_tuning.jobs.create(model="onray", training_file=train.id)
    failed = finished(api, after.id, timeout=120)
    assert failed.status == "failed" and failed.error is not None, failed
    assert failed.error.message == (
        f"the ray launcher cannot reach the Ray cluster at {ray_cluster.address}: "
        f"Failed to connect to Ray at address: {ray_cluster.address}."
    )
    assert [p.name for p in artifacts.rglob("*")] == ["onray"]
    assert answered_by(api, "onray") == version


def training_on_ray(
    server: RatchetProcess, key: str, training_file: str, cluster: RayCluster, *, progress: bool = True
) -> tuple[str, dict[str, Any]]:
    """Start a long fine-tuning job; once its run trains on Ray (its job running, and with
    `progress`, the trainer's step lines reaching the run): the job id and the run."""
    job = client(server, key).fine_tuning.jobs.create(
        model="onray", training_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 500, "batch_size": 8}}},
    )  # fmt: skip
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as h:

        def training() -> dict[str, Any] | None:
            run = next((r for r in h.get("/v1/runs").json() if r["state"] == "training"), None)
            if run is None or (progress and not run["stats"].get("progress")):
                return None
            try:
                status = cluster.jobs.get_job_status(f"ratchet-onray-{run['id']}")
            except RuntimeError as exc:  # the run is `training` a moment before its job is submitted
                if "does not exist" in str(exc):
                    return None
                raise
            return run if status == JobStatus.RUNNING else None

        return job.id, wait_for(training, 180, "a run to be training on Ray")
