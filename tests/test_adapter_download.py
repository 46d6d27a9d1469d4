"""`GET /v1/adapters/{name}/download` and `ratchet adapters download`, against a real server: the
archive of a registered adapter holds its PEFT files byte for byte, loads with `peft` on the tiny
model with the stored weights, and no other project's key (nor a key without `read`) gets it."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.adapter_archive import archive_chunks
from service.store.runs import EvalReportText
from service.store.serving import AdapterRecord
from tests.fixtures.server import RatchetProcess
from tests.test_import_export import run
from trainer.null_adapter import write_random_adapter

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")


@pytest.fixture(scope="module")
def registered(ratchet_server: RatchetProcess, tiny_model_dir: Path) -> tuple[str, Path, str]:
    """(served name, adapter directory, the project's read key) of an adapter registered by path."""
    ratchet_server.create_project("dl")
    adapter = write_random_adapter(
        tiny_model_dir, ratchet_server.data_dir / "adapters" / "dl" / "ext-1", seed=5
    )
    with ratchet_server.client() as c:
        r = c.post("/v1/projects/dl/adapters", json={"path": str(adapter), "canary": False})
        assert r.status_code == 201, r.text
        name = r.json()["served_name"]
        read_key = c.post("/v1/projects/dl/keys", json={"scopes": ["read"]}).json()["api_key"]
    return name, adapter, read_key


def test_cli_download_is_the_adapter_byte_for_byte_and_loads_with_peft(
    ratchet_server: RatchetProcess, registered: tuple[str, Path, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    name, adapter, read_key = registered
    out = tmp_path / "a.tar.gz"
    stdout, _ = run(ratchet_server, read_key, "adapters", "download", name, "-o", str(out))
    assert str(out) in stdout
    with tarfile.open(out, "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    top = tmp_path / "x" / name.replace("@", "-")
    assert sorted(p.name for p in top.iterdir()) == sorted([*PEFT_FILES, "ratchet.json"])  # never evaluated
    for file in PEFT_FILES:
        assert (top / file).read_bytes() == (adapter / file).read_bytes()
    record = json.loads((top / "ratchet.json").read_text())
    assert (record["served_name"], record["project"], record["method"]) == (name, "dl", "external")
    assert str(ratchet_server.data_dir) not in (top / "ratchet.json").read_text()  # no server paths
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), top)
    stored = load_file(adapter / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(stored) > 0
    for key, tensor in stored.items():
        match = [
            v
            for k, v in loaded.items()
            if k.replace(".default", "").endswith(key.removeprefix("base_model."))
        ]
        assert len(match) == 1 and torch.equal(match[0], tensor), key


def test_only_the_projects_read_key_gets_it(
    ratchet_server: RatchetProcess, registered: tuple[str, Path, str]
) -> None:
    name, _, read_key = registered
    other = ratchet_server.create_project("dl-other")
    with ratchet_server.client() as c:
        ingest_only = c.post("/v1/projects/dl/keys", json={"scopes": ["ingest"]}).json()["api_key"]
    with ratchet_server.client(read_key) as c:
        r = c.get(f"/v1/adapters/{name}/download")
        assert (r.status_code, r.headers["content-type"]) == (200, "application/gzip")
        assert r.content[:2] == b"\x1f\x8b"
        assert c.get("/v1/adapters/dl@v99/download").status_code == 404
        assert c.get("/v1/adapters/not-a-name/download").status_code == 422
    with ratchet_server.client(other) as c:
        r = c.get(f"/v1/adapters/{name}/download")
        assert r.status_code == 404 and r.content[:2] != b"\x1f\x8b"
    with ratchet_server.client(ingest_only) as c:
        assert c.get(f"/v1/adapters/{name}/download").status_code == 403


def test_archive_carries_the_eval_report_when_there_is_one(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    record = AdapterRecord(project="p", version=3, served_name="p@v3", path=str(tmp_path), parent_version=2,
                           method="dpo", snapshot_sha256="ab", state="champion", created_at=now, updated_at=now)  # fmt: skip
    report = EvalReportText(json='{"promote": true}', markdown="# Decision: promote\n")
    data = b"".join(archive_chunks(record, [tmp_path / "adapter_config.json"], report))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members["p-v3/eval_report.md"] == b"# Decision: promote\n"
    assert json.loads(members["p-v3/eval_report.json"]) == {"promote": True}
    assert members["p-v3/adapter_config.json"] == b"{}"
    assert json.loads(members["p-v3/ratchet.json"])["parent_version"] == 2


def test_the_listing_names_versions_and_the_detail_has_path_and_manifest(
    ratchet_server: RatchetProcess, registered: tuple[str, Path, str], tiny_model_dir: Path
) -> None:
    """Handlers answer with wire types: no server-side path nor full manifest in the listing;
    the detail route has both. A directory whose manifest a newer Ratchet wrote is refused by
    name and versions (422), recording nothing."""
    name, adapter, read_key = registered
    with ratchet_server.client(read_key) as c:
        listed = c.get("/v1/adapters", params={"project": "dl"}).json()
        detail = c.get(f"/v1/adapters/{name}").json()
    mine = next(a for a in listed if a["served_name"] == name)
    assert not {"path", "manifest", "fingerprint", "erased_data"} & set(mine), mine
    assert str(ratchet_server.data_dir) not in json.dumps(listed)
    assert (mine["run_id"], mine["erased"], mine["state"]) == (None, False, "candidate")
    assert detail["path"] == str(adapter.resolve())
    assert (detail["manifest"]["kind"], detail["manifest"]["schema_version"]) == ("random", 1)

    newer = write_random_adapter(
        tiny_model_dir, ratchet_server.data_dir / "adapters" / "dl" / "ext-new", seed=6
    )
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 2}))
    with ratchet_server.client() as c:
        r = c.post("/v1/projects/dl/adapters", json={"path": str(newer), "canary": False})
        assert r.status_code == 422 and "has schema_version 2; this version of Ratchet reads 1" in r.text, (
            r.text
        )
        assert c.get("/v1/adapters", params={"project": "dl"}).json() == listed
