"""The external tools the benches need, installed on first use or named in one line.

System commands (wrk, node) come from Debian the way `.ci/run` installs its system parts:
`apt-get` when the command is missing and we run as root; otherwise the bench stops with one line
saying what to install. The peer gateways are installed into `bench/.cache/` (git-ignored), never
into the project's dependencies: Portkey's gateway with npm, LiteLLM's proxy into its own venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"

PORTKEY_VERSION = "1.15.2"
# Portkey's streaming fails with the @hono/node-server that npm resolves for 1.15.2 today
# (Portkey-AI/gateway #1389, #1550); the older server it was built against works.
HONO_NODE_SERVER_VERSION = "1.13.8"
# 1.107.0 was a compromised release (yanked); 1.108.8+ need a litellm-proxy-extras the
# registry here lacks. Pin one we have run.
LITELLM_VERSION = "1.108.7"
PYSPY_VERSION = "0.4.3"

_apt_updated: list[bool] = []  # apt-get update runs once per process


def ensure_command(command: str, apt_package: str) -> str:
    """The path of `command`, apt-installing `apt_package` first when it is missing and we are
    root; otherwise exit with one line naming what to install."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install(apt_package)
        found = shutil.which(command)
        if found:
            return found
    sys.exit(
        f"bench: `{command}` is missing: install Debian's `{apt_package}` (apt-get install {apt_package})"
    )


def ensure_portkey(cache: Path = CACHE) -> Path:
    """Portkey's gateway `PORTKEY_VERSION` under `cache/portkey`, installed with npm when absent;
    returns its start script (run it with `node <script> --port=<p>`)."""
    ensure_command("node", "nodejs")
    npm = ensure_command("npm", "npm")
    root = cache / "portkey"
    script = root / "node_modules/@portkey-ai/gateway/build/start-server.js"
    if (
        _npm_version(root, "@portkey-ai/gateway") == PORTKEY_VERSION
        and _npm_version(root, "@hono/node-server") == HONO_NODE_SERVER_VERSION
    ):
        return script
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "ratchet-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }
    (root / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"bench: installing @portkey-ai/gateway {PORTKEY_VERSION} into {root} ...", flush=True)
    _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root)
    if not script.exists():
        sys.exit(f"bench: npm installed @portkey-ai/gateway but {script} is missing")
    return script


def ensure_litellm(cache: Path = CACHE) -> Path:
    """LiteLLM's proxy `LITELLM_VERSION` in its own venv, installed when absent; returns its
    `litellm` command."""
    return ensure_venv_tool("litellm", f"litellm[proxy]=={LITELLM_VERSION}", cache)


def ensure_pyspy(cache: Path = CACHE) -> Path:
    """py-spy (a sampling profiler, a binary wheel) in its own venv; returns its `py-spy` command."""
    return ensure_venv_tool("py-spy", f"py-spy=={PYSPY_VERSION}", cache)


def ensure_venv_tool(command: str, requirement: str, cache: Path = CACHE) -> Path:
    """`command` from `requirement` pip-installed into its own venv `cache/<command>`, never into
    the project's; created (or re-created for another requirement) when absent."""
    venv = cache / command
    path = venv / "bin" / command
    marker = venv / ".installed"
    if path.exists() and marker.exists() and marker.read_text() == requirement:
        return path
    print(f"bench: installing {requirement} into {venv} ...", flush=True)
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    _run([str(venv / "bin/pip"), "install", "-q", requirement])
    if not path.exists():
        sys.exit(f"bench: pip installed {requirement} but {path} is missing")
    marker.write_text(requirement)
    return path


def _npm_version(root: Path, package: str) -> str | None:
    manifest = root / "node_modules" / package / "package.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text()).get("version"))


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"bench: installing {package} with apt-get ...", flush=True)
    if not _apt_updated:
        _run(["apt-get", "update", "-q"], env=env)
        _apt_updated.append(True)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env)


def _run(command: list[str], **kwargs: object) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        sys.exit(f"bench: `{' '.join(command)}` failed ({done.returncode}): {' / '.join(tail)}")
