"""Files written so that a crash leaves either the old file or the whole new one (STYLE.md 5):
written to a temporary sibling, fsync'd, renamed over the target, and the rename made durable by
an fsync of the directory."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(path: Path, content: bytes) -> None:
    """`path` holds `content`, durably, once this returns; a reader never sees a part of it. The
    temporary sibling is `path` with the suffix `.tmp` (a crash may leave it behind)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Make every file under directory `path`, and its directories' entries, durable."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
