"""An adapter version as a tar.gz: its PEFT files, manifest and evaluation report, streamed.

What `GET /v1/adapters/{name}/download` hands out so nothing trained in Ratchet is locked in. One
directory, `<project>-v<N>/`, that `peft.PeftModel.from_pretrained(base, dir)` (or vLLM's
`--lora-modules`) loads as it is:

- the PEFT files as the trainer wrote them (`PEFT_FILES` present in the adapter directory, byte
  for byte), and the trainer's `manifest.json` when the directory has one;
- `ratchet.json`: the version's record (served name, method, parent version, snapshot sha256,
  state, created_at), never server paths;
- `eval_report.md` and `eval_report.json`: the offline gate's report on this version, when the run
  that trained it was evaluated.

The archive is produced as it is read (`tarfile` in stream mode): chunks are yielded file by file,
so memory holds about one file's compressed bytes (a LoRA adapter's weights are megabytes).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from service.errors import NotFound
from service.store.runs import EvalReportText
from service.store.serving import AdapterRecord

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "manifest.json")


def archive_name(record: AdapterRecord) -> str:
    return f"{record.project}-v{record.version}"


def adapter_files(record: AdapterRecord) -> list[Path]:
    """The adapter directory's files that go in the archive; `NotFound` when it holds no adapter
    (never trained into a directory, or its files were removed)."""
    directory = Path(record.path) if record.path else None
    if directory is None or not (directory / "adapter_config.json").is_file():
        raise NotFound(f"{record.served_name} has no adapter files on this server to download")
    return [directory / name for name in PEFT_FILES if (directory / name).is_file()]


class _Sink(io.RawIOBase):
    """Collects what tarfile writes until the next chunk is taken."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        chunk = bytes(self.buffer)
        self.buffer.clear()
        return chunk


def archive_chunks(
    record: AdapterRecord, files: list[Path], report: EvalReportText | None
) -> Iterator[bytes]:
    """The tar.gz of the version (see the module docstring), chunk by chunk."""
    top = archive_name(record)
    sink = _Sink()
    info_json = msgspec.json.format(
        msgspec.json.encode(
            {
                "served_name": record.served_name, "project": record.project, "version": record.version,
                "method": record.method, "parent_version": record.parent_version,
                "snapshot_sha256": record.snapshot_sha256, "state": record.state,
                "created_at": record.created_at,
            }
        )
    )  # fmt: skip
    extra = {"ratchet.json": info_json}
    if report is not None:
        extra |= {"eval_report.md": report.markdown.encode(), "eval_report.json": report.json.encode()}
    with tarfile.open(fileobj=sink, mode="w|gz", dereference=True) as tar:
        for path in files:
            tar.add(path, arcname=f"{top}/{path.name}", recursive=False)
            yield sink.take()
        for name, data in extra.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            yield sink.take()
    yield sink.take()
