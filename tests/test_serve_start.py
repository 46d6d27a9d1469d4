"""`ratchet serve` and `ratchet gateway` refuse what they cannot use in one line, before they start
anything: a port out of range or in use, a data directory that cannot be one, an empty setting.

The refusals run the CLI's entry point in this process (they end before a server would start);
the one that serves runs it as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.cli import main
from tests.fixtures.server import free_port, wait_for


def refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], *args: str
) -> str:
    """Run `ratchet ARGS` with `env`; assert exit 1 with nothing on stdout, return stderr."""
    for name in [n for n in os.environ if n.startswith("RATCHET_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(list(args)) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err, out + err
    return err.strip()


@pytest.mark.parametrize(("command", "port"), [("serve", "99999"), ("serve", "0"), ("gateway", "-1")])
def test_a_port_out_of_range_is_refused_naming_the_setting(
    command: str,
    port: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(monkeypatch, capsys, {"RATCHET_DATA_DIR": str(tmp_path / "d")}, command, "--port", port)
    assert err.startswith("ratchet: invalid settings:") and err.endswith("port` (from the command line)"), err
    assert not (tmp_path / "d").exists()


def test_a_port_in_use_is_refused_before_anything_starts_or_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        err = refused(monkeypatch, capsys, {"RATCHET_DATA_DIR": str(data)}, "serve", "--port", str(port))
    assert (
        err
        == f"ratchet: cannot listen on 127.0.0.1:{port}: Address already in use: choose another with --host or --port"
    )
    # No "serving" line and no admin key shown once for a server that never served: no store made.
    assert not data.exists()


def test_a_data_dir_that_cannot_be_a_directory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    for data_dir in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        env = {"RATCHET_DATA_DIR": str(data_dir)}
        err = refused(monkeypatch, capsys, env, "serve", "--port", str(free_port()))
        assert err.startswith(f"ratchet: cannot use {data_dir}"), err


def test_an_empty_data_dir_is_refused_not_read_as_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    err = refused(monkeypatch, capsys, {"RATCHET_DATA_DIR": ""}, "serve", "--port", str(free_port()))
    assert "data_dir" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_flag_port_wins_over_the_environment(tmp_path: Path) -> None:
    """Flags over environment over file: `--port P` serves on P whatever RATCHET_PORT says."""
    port = free_port()
    env = {
        **os.environ,
        "RATCHET_DATA_DIR": str(tmp_path / "d"),
        "RATCHET_PORT": "1",
        "RATCHET_ADMIN_KEY": "k",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, 120, "ratchet serve --port")
        assert proc.poll() is None and _healthy(port)
    finally:
        proc.terminate()
        proc.wait(30)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
