"""`ratchet demo`: the whole loop on one machine, with a tiny model and simulated users.

1. builds the offline tiny model (`python -m demo tiny-model`, cached under the data dir);
2. starts vLLM-CPU with runtime LoRA (or uses `--vllm-url`) and `ratchet serve` beside it;
3. creates project `demo` and declares nothing about how to judge it: no rules, no golden set,
   no eval.json. The offline gate builds its evidence from the users' held-out feedback alone
   (corrections and liked answers as references, a reward model trained beside each adapter once
   it orders held-out preference pairs as users did, guards against forgetting and degenerate answers);
4. runs simulated users through the gateway with the `openai` client. Their hidden preference:
   exactly-right answers, in uppercase when they asked for it, opened with "sure, " when they asked
   for a polite one (the base model ignores both instructions). They start asking for polite
   answers once the first adapter is promoted (the app grows a feature), so there are two things
   to learn, one after the other. They are not convenient: only about half the answers get
   a thumb (`rate_share`), about one thumb in ten is random (`noise`), some of the disliked ones
   get the right answer typed in (`correction_rate`), and one user (`user-flood`) sends a stream
   of requests and thumbs every answer the wrong way (`flood_share` of the requests); the
   snapshot's per-user cap and the online gate's per-user cap must hold against them;
5. the loop turns unattended: new signal -> snapshot -> train -> offline gate -> canary ->
   online gate -> promote, until two adapters were promoted (or time is up), then prints live
   thumbs-up rate per version with 95% intervals, per version and kind of prompt, how long each
   stage took, and each offline gate's evidence (the learned judge's calibration).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from math import sqrt
from pathlib import Path
from typing import Any

import httpx

from demo import tiny_world
from demo.vllm_server import VLLMServer, free_port

PROJECT = "demo"
FLOODER = "user-flood"


@dataclass
class DemoOptions:
    data_dir: Path = Path("./data/demo")
    minutes: float = 25.0
    promotions: int = 2
    users: int = 40
    concurrency: int = 4
    """Requests in flight at once. vLLM-CPU batches them: 8 got ~1.6x the answers of 4 for the same
    CPU (0.06 vs 0.10 CPU-s per answer, vLLM, Ratchet and the users together, 2026-12-01), so
    tests/test_loop_e2e.py, which waits on ratings for its signal and its canaries, runs 8."""
    correction_rate: float = 0.5
    """Share of disliked (rated) answers the user corrects."""
    rate_share: float = 0.5
    """Share of answers an honest user rates at all."""
    noise: float = 0.1
    """Share of thumbs that are a coin flip instead of the user's real opinion."""
    flood_share: float = 0.1
    """Share of requests sent by the one flooding user, who thumbs every answer the wrong way."""
    vllm_url: str | None = None
    """Use this vLLM server (serving `model_dir` as "tiny", runtime LoRA on) instead of starting one."""
    model_dir: Path | None = None
    """Use this tiny model instead of building one under `data_dir`."""
    seed: int = 0
    quiet: bool = False


@dataclass
class VersionRow:
    adapter: str
    answers: int
    rated: int
    up: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass
class DemoResult:
    promoted: list[str]
    versions: list[VersionRow]
    runs: list[dict[str, Any]]
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)
    by_kind: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    """Per version, per kind of prompt (plain, upper, polite): (answers the honest users liked,
    answers to them), by their real opinion (no noise, no flooder)."""


def wilson(up: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = up / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


class _Processes:
    """Children started by the demo, stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s; see {log}")


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1"
    )
    return env


class Users:
    """Simulated end users calling the gateway and rating what they get."""

    def __init__(self, base_url: str, key: str, options: DemoOptions) -> None:
        import openai

        self.client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=2, timeout=60)
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.options = options
        self.first_questions = tiny_world.all_questions(kinds=("plain", "upper"))
        self.questions = tiny_world.all_questions()
        self.stop = threading.Event()
        self.polite = threading.Event()
        """Set once the first adapter is promoted: users also ask for polite answers from then on.

        Not sooner: when polite prompts came in from the first run on, a first candidate rejected
        offline (as happens now and then on its ~70 held-out ratings) was followed by one trained on
        both kinds, which learned both rules at once (96% uppercase, 100% polite) and left nothing
        for a second promotion to show (e2e test, 2026-12-02)."""
        self.errors = 0
        self.sent = 0
        self._lock = threading.Lock()
        self.by_kind: dict[str, dict[str, tuple[int, int]]] = {}

    def run(self, worker: int) -> None:
        rng = random.Random(self.options.seed * 1000 + worker)
        o = self.options
        while not self.stop.is_set():
            question = rng.choice(self.questions if self.polite.is_set() else self.first_questions)
            flooder = rng.random() < o.flood_share
            user = FLOODER if flooder else f"user-{rng.randrange(o.users)}"
            # What the demo's app sends (issue 11): its system prompt on every request, now and then
            # an earlier turn, and some questions as a list of content parts.
            messages = tiny_world.app_messages(question, rng)
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=PROJECT,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=8,
                    temperature=0,
                    user=user,  # type: ignore[arg-type]
                )
                answer = raw.parse()
            except Exception:
                self.errors += 1
                time.sleep(0.5)
                continue
            self.sent += 1
            text = answer.choices[0].message.content or ""
            liked = tiny_world.user_likes(messages, text)
            feedback: dict[str, Any] = {"log_id": answer.id, "end_user": user}
            if flooder:
                feedback["rating"] = -1 if liked else 1
            else:
                self._count(raw.headers.get("x-ratchet-adapter", "?"), question.kind, liked)
                if rng.random() >= o.rate_share:
                    continue
                thumb = liked if rng.random() >= o.noise else rng.random() < 0.5
                feedback["rating"] = 1 if thumb else -1
                if not thumb and rng.random() < o.correction_rate:
                    feedback["correction"] = tiny_world.correct_answer(messages)
            self.http.post("/v1/feedback", json=feedback)

    def _count(self, adapter: str, kind: str, liked: bool) -> None:
        with self._lock:
            kinds = self.by_kind.setdefault(adapter, {})
            up, n = kinds.get(kind, (0, 0))
            kinds[kind] = (up + liked, n + 1)


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the loop (see the module docstring) and return the per-version table."""
    say = (lambda *a: None) if options.quiet else (lambda *a: print(*a, flush=True))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM as an ordinary exit, so the vLLM and Ratchet children are stopped too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    data = options.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    procs = _Processes()
    with contextlib.ExitStack() as stack:
        model = (options.model_dir or data / "model").resolve()
        if not (model / "config.json").exists():
            say("[1/4] building the tiny model offline (about 1-2 minutes, once) ...")
            subprocess.run(
                [sys.executable, "-m", "demo", "tiny-model", str(model)], env=_offline_env(), check=True
            )
        vllm_url = options.vllm_url
        if vllm_url is None:
            vllm = VLLMServer(model, data / "vllm.log")
            vllm_url = vllm.base_url
            say(f"[2/4] starting vLLM-CPU with runtime LoRA on {vllm_url} (about a minute) ...")
            stack.callback(vllm.stop)
            vllm.start()
        stack.callback(procs.stop)  # Ratchet stops first, then vLLM

        ratchet_dir = data / "ratchet"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        admin = secrets.token_urlsafe(16)
        env = {
            **_offline_env(),
            "RATCHET_DATA_DIR": str(ratchet_dir), "RATCHET_PORT": str(port), "RATCHET_ADMIN_KEY": admin,
            "RATCHET_VLLM__URLS": f'["{vllm_url}"]', "RATCHET_VLLM__BASE_SERVED_NAME": "tiny",
            "RATCHET_VLLM__BASE_MODEL": str(model),
            "RATCHET_CANARY_FRACTION": "0.5",
            "RATCHET_TRAINING__MIN_NEW_RATINGS": "300", "RATCHET_TRAINING__MIN_TRAIN_ROWS": "32",
            "RATCHET_TRAINING__RUN_COOLDOWN_SECONDS": "0",
            "RATCHET_TRAINING__SIGNAL_CHECK_SECONDS": "1", "RATCHET_TRAINING__CANARY_CHECK_SECONDS": "1",
            "RATCHET_TRAINING__RECONCILE_SECONDS": "30", "RATCHET_TRAINING__CONTINUE_FROM_CHAMPION": "true",
            "RATCHET_TRAINING__EVAL_MAX_EXAMPLES": "120", "RATCHET_TRAINING__EVAL_PREFERENCE_AGREEMENT": "false",
            # SFT on the liked and corrected answers, 60 steps of 8 at lr 3e-3: behind the app's
            # ~250-token system prompt, KTO (what `auto` picks from these thumbs) left the uppercase
            # instruction at 13-17% on held-out app prompts after 40-60 steps of 16 at lr 5e-4-2e-3
            # (the gate refused it), SFT reached 45-48% (the rest: held-out facts said wrong in
            # uppercase) at a fifth of the CPU (2026-12-01). The reward model reads the last 64
            # tokens (the question and the answer), not the system prompt every example shares.
            "RATCHET_TRAINING__METHOD": "sft",
            "RATCHET_TRAINING__SPEC_OVERRIDES": (
                '{"optim": {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-3},'
                ' "reward_model": {"max_length": 64}}'
            ),
            "RATCHET_ONLINE_GATE__MIN_RATINGS": "40", "RATCHET_ONLINE_GATE__MIN_LIFT": "0.1",
            "RATCHET_ONLINE_GATE__GUARD_MIN_REQUESTS": "40", "RATCHET_ONLINE_GATE__MAX_RATINGS": "600",
            # Each canary user's first 30 thumbs count: the ~20 users of each arm can then give the
            # 600 ratings after which an undecided canary is rolled back. With 10 they could give
            # 200 at most: a canary only slightly better (29% vs 20% up) stayed undecided until the
            # demo's end (e2e test, 2026-12-02), where a rollback would have started the next run.
            "RATCHET_ONLINE_GATE__MAX_RATINGS_PER_USER": "30", "RATCHET_SNAPSHOT__MAX_USER_SHARE": "0.05",
            "RATCHET_SNAPSHOT__MIN_USER_CAP": "5", "RATCHET_SNAPSHOT__HOLDOUT_FRACTION": "0.3",
            # A run trains on the newest ~600 rows (120 of them older ones replayed), not the whole
            # history: polite prompts are asked only since the first promotion, and the holdout
            # takes the newest 30% of them. At the second promotion's snapshot of an e2e run
            # (2026-12-03), polite answers were 122 of the 380 liked or corrected training rows with
            # this bound, 74 of 735 with the whole history; trained on the whole history, the
            # second promoted version once answered politely only 16% of the time (CI, 2026-12-02).
            "RATCHET_SNAPSHOT__MAX_TRAIN_EXAMPLES": "600",
            # The reward model trains its default 50 steps (`feedback_gate.reward_max_steps`). With
            # 30 it hardly told an uppercase answer from a lowercase one: at the first run it put
            # the candidate at +0.003, +0.030 and -0.003, intervals reaching below 0, where the
            # references said +0.50, and refused it in three of four e2e runs (each then needed
            # another run, ~90 s); with 50, +0.224 [+0.172, +0.269] (2026-12-03).
        }  # fmt: skip
        say(f"[3/4] starting Ratchet on {url} (data in {ratchet_dir}) ...")
        server = procs.start([sys.executable, "-m", "service.cli", "serve"], env, data / "ratchet.log")
        _wait_healthy(f"{url}/healthz", server, data / "ratchet.log", 120)
        admin_http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        created = admin_http.post("/v1/projects", json={"name": PROJECT, "base_model": str(model)})
        key = created.json()["api_key"] if created.status_code == 201 else admin_http.post(
            f"/v1/projects/{PROJECT}/keys").json()["api_key"]  # fmt: skip
        _wait_serving(admin_http)

        say(f"[4/4] {options.users} simulated users are talking to project {PROJECT!r} through the gateway")
        users = Users(url, key, options)
        threads = [
            threading.Thread(target=users.run, args=(i,), daemon=True) for i in range(options.concurrency)
        ]
        for t in threads:
            t.start()
        promoted: list[str] = []
        deadline = started + options.minutes * 60
        next_line = time.monotonic() + 5
        try:
            # Checked every second (the loop ends at most 1 s after the last promotion, not 5 s),
            # a progress line every 5 s.
            while time.monotonic() < deadline and len(promoted) < options.promotions:
                time.sleep(1)
                events = admin_http.get(f"/v1/projects/{PROJECT}/events", params={"limit": 500}).json()
                promoted = [e["detail"]["adapter"] for e in reversed(events) if e["kind"] == "promoted"]
                if promoted and not users.polite.is_set():
                    users.polite.set()
                    say(
                        "        the first adapter is promoted; from now on users also ask for polite answers"
                    )
                if time.monotonic() >= next_line or len(promoted) >= options.promotions:
                    next_line += 5
                    say(_progress_line(admin_http, time.monotonic() - started, users, promoted))
        finally:
            users.stop.set()
            for t in threads:
                t.join(timeout=60)
        result = _result(admin_http, promoted, time.monotonic() - started)
        result.by_kind = users.by_kind
        say(render(result))
        return result


def _wait_serving(http: httpx.Client, timeout: float = 300) -> None:
    """Until version 0 (the zero adapter) serves the project, so no request meets the bare base."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if http.get(f"/v1/projects/{PROJECT}/rollout").json().get("champion") == f"{PROJECT}@v0":
            return
        time.sleep(0.25)


def _progress_line(http: httpx.Client, elapsed: float, users: Users, promoted: list[str]) -> str:
    rollout = http.get(f"/v1/projects/{PROJECT}/rollout").json()
    runs = http.get("/v1/runs", params={"project": PROJECT, "limit": 1}).json()
    stats = http.get(f"/v1/projects/{PROJECT}/stats").json()
    run = ""
    if runs:
        r = runs[0]
        progress = r["stats"].get("progress") or {}
        step = (
            f" step {progress.get('step')}/{progress.get('total_steps')}"
            if r["state"] == "training" and progress
            else ""
        )
        run = f" | run {r['id'][-9:]}: {r['state']}{step}"
    rates = "  ".join(
        f"{(a['adapter'] or 'none').split('@')[-1]} {a['thumbs_up_rate']:.0%}/{a['rated']}"
        for a in stats["by_adapter"] if a["rated"]
    )  # fmt: skip
    canary = (
        f" canary {rollout['candidate'].split('@')[-1]} {rollout['fraction']:.0%}"
        if rollout["candidate"]
        else ""
    )
    return (f"{elapsed:5.0f}s  serving {rollout['champion'].split('@')[-1]}{canary}{run} | "
            f"answers {users.sent} | thumbs-up by version: {rates} | promoted: {len(promoted)}")  # fmt: skip


def _result(http: httpx.Client, promoted: list[str], seconds: float) -> DemoResult:
    stats = http.get(f"/v1/projects/{PROJECT}/stats").json()
    versions = []
    for a in stats["by_adapter"]:
        rated, up = a["rated"], a["thumbs_up"]
        low, high = wilson(up, rated) if rated else (None, None)
        versions.append(
            VersionRow(a["adapter"] or "none", a["logs"], rated, up, a["thumbs_up_rate"], low, high)
        )
    # The promotion event is written before its run's record reaches `promoted`: give the record a
    # moment to catch up, so the table shows each promoted run's final state.
    for _ in range(120):
        runs = http.get("/v1/runs", params={"project": PROJECT, "limit": 100}).json()
        settled = {r["stats"].get("adapter") for r in runs if r["state"] == "promoted"}
        if set(promoted) <= settled:
            break
        time.sleep(0.25)
    events = http.get(f"/v1/projects/{PROJECT}/events", params={"limit": 1000}).json()
    return DemoResult(promoted, versions, list(reversed(runs)), seconds, events)


def render(result: DemoResult) -> str:
    """The closing table: thumbs-up rate per version with 95% intervals, and each run's stages."""
    lines = ["", "Live thumbs-up rate per adapter version (95% Wilson interval)",
             f"{'version':<10}{'answers':>8}{'rated':>7}{'up-rate':>9}   interval"]  # fmt: skip
    for v in result.versions:
        if v.rate is None:
            continue
        lines.append(f"{v.adapter.split('@')[-1]:<10}{v.answers:>8}{v.rated:>7}{v.rate:>9.1%}   "
                     f"[{v.low:.1%}, {v.high:.1%}]")  # fmt: skip
    if result.by_kind:
        lines += ["", "What each version learned: thumbs-up rate by kind of prompt (rated answers)",
                  f"{'version':<10}" + "".join(f"{k:>16}" for k in tiny_world.KINDS)]  # fmt: skip
        order = {v.adapter: i for i, v in enumerate(result.versions)}  # version order, as above
        for adapter, kinds in sorted(result.by_kind.items(), key=lambda item: order.get(item[0], -1)):
            cells = (
                f"{up / n:.0%} ({n})" if n else "-"
                for up, n in (kinds.get(k, (0, 0)) for k in tiny_world.KINDS)
            )
            lines.append(f"{adapter.split('@')[-1]:<10}" + "".join(f"{c:>16}" for c in cells))
    lines += ["", "Runs", f"{'run':<28}{'state':<13}{'adapter':<10}stage seconds"]
    for r in result.runs:
        stages = "  ".join(f"{k} {v:.0f}" for k, v in (r["stats"].get("stage_seconds") or {}).items())
        adapter = (r["stats"].get("adapter") or "-").split("@")[-1]
        lines.append(f"{r['id']:<28}{r['state']:<13}{adapter:<10}{stages}")
    for r in result.runs:
        gate = r["stats"].get("eval")
        if not gate:
            continue
        lines.append(f"  {r['id']} offline gate ({'promote' if gate['promote'] else 'reject'}, "
                     f"{gate.get('wall_time_s', 0):.0f} s): {gate.get('evidence', '')}")  # fmt: skip
        for name, scorer in (gate.get("scorers") or {}).items():
            interval = (
                f"{scorer['mean']:+.3f} [{scorer['low']:+.3f}, {scorer['high']:+.3f}] n={scorer['n']}"
                if scorer.get("mean") is not None
                else "no examples"
            )
            lines.append(f"    {name:<26}{scorer['role']:<11}{interval:<34}{scorer.get('eligibility') or ''}")
        training = r["stats"].get("training") or {}
        reward = training.get("reward_model") or {}
        if training:
            lines.append(
                f"    adapter trained in {training.get('adapter_wall_time_s', 0):.0f} s "
                f"(preparing {training.get('prepare_wall_time_s') or 0:.0f} s, "
                f"TRL's loop {training.get('metrics', {}).get('train_runtime_s') or 0:.0f} s); reward model "
                + (
                    f"in {reward['wall_time_s']:.0f} s"
                    if "wall_time_s" in reward
                    else f"skipped: {reward.get('skipped', 'off')}"
                )
            )
    canary = [e for e in result.events if e["kind"] in ("promoted", "rolled_back")]
    for e in canary:
        lines.append(f"  {e['kind']} {e['detail']['adapter']}: {e['detail']['reason']}")
    lines.append(
        f"\npromoted: {', '.join(result.promoted) or 'none'}; total wall time {result.seconds / 60:.1f} min"
    )
    return "\n".join(lines)
