"""Load, crash and consistency helpers shared by bench/{concurrency,crash,soak}.py and tests/test_reliability.py.

- `ServerProcess`: server.py on streamable HTTP on a free loopback port (kill -9 with `kill()`).
- `Ledger` + `session()`: one MCP client session of mixed writes and reads that records every
  acknowledged write (created names and ids, the highest acknowledged version of each skill,
  acknowledged deletes) and counts calls and error codes.
- `verify(db_path, ledger)`: what the database holds against what was acknowledged: lost writes,
  torn skills (versions not consecutive; FTS, summary or current embedding missing), integrity_check.
- `process_stats(pid)`: RSS and open file descriptors, from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """server.py over streamable HTTP on 127.0.0.1, its own process group, output in `log_path`."""

    def __init__(self, db_path: Path, log_path: Path, **env: str) -> None:
        self.db_path, self.log_path = Path(db_path), Path(log_path)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFMCP_", "REPLIT_", "PORT"))}
        self.env.update(SELFMCP_DB_PATH=str(db_path), SELFMCP_HOST="127.0.0.1", SELFMCP_PORT=str(self.port),
                        SELFMCP_TRANSPORT="streamable-http", SELFMCP_LOG_LEVEL="WARNING", SELFMCP_AUTH="none")
        self.env.update(env)  # loopback only, so no sign-in unless `env` asks for one
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    def start(self, timeout_s: float = 60) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "server.py")], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while self.health()[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of GET /health; (0, {}) when nothing answers."""
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except OSError:
            return 0, {}

    def kill(self) -> None:
        """kill -9 the whole process group, as a power cut would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_stats(pid: int) -> dict[str, int]:
    """Resident memory (KiB) and open file descriptors of `pid`."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


# ------------------------------------------------------------------------------------ the load

@dataclass
class Ledger:
    """What the server acknowledged, and what it answered."""

    created: dict[str, int] = field(default_factory=dict)  # name -> id
    versions: dict[int, int] = field(default_factory=dict)  # id -> highest acknowledged version
    deleted: set[int] = field(default_factory=set)
    calls: int = 0
    acknowledged: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    generic: int = 0  # failures without the error shape (must stay 0)

    def record(self, result: Any) -> dict[str, Any] | None:
        """Count a tool result; the payload of a success, None for an error."""
        self.calls += 1
        body = result.structured_content
        if result.is_error:
            if not isinstance(body, dict) or not {"error", "message", "hint"} <= body.keys():
                self.generic += 1
                self.errors["<generic>"] += 1
            else:
                self.errors[body["error"]] += 1
            return None
        return body

    def ack_version(self, skill_id: int, version: int) -> None:
        self.acknowledged += 1
        self.versions[skill_id] = max(version, self.versions.get(skill_id, 0))

    def summary(self) -> dict[str, Any]:
        return {"calls": self.calls, "acknowledged_writes": self.acknowledged, "errors": dict(self.errors),
                "generic_errors": self.generic}


WORDS = ("convert csv json parse date time weather fetch page text summary image resize hash file list sort "
         "merge split count words translate number format email send check url status report table").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def session(url: str, ledger: Ledger, *, seed: int, ops: int | None = None, stop: Callable[[], bool] = lambda: False,
                  hot_ids: tuple[int, ...] = (), mode: str = "auto") -> None:
    """One client session of mixed writes and reads until `ops` calls are made or `stop()` says so.

    Writes: create (unique names), text updates of its own skills and of the shared `hot_ids`
    (concurrent updates of one skill), deletes of its own skills. Reads: search, list, detail.
    A failed connection ends the session (the crash bench kills the server under it).
    """
    from mcp import Client

    rng = random.Random(seed)
    own: list[int] = []
    n = 0
    async with Client(url, mode=mode) as client:
        while (ops is None or n < ops) and not stop():
            n += 1
            roll = rng.random()
            if roll < 0.30 or not own:
                name = f"s{seed}-{n}-{rng.randrange(10**6)}"
                body = ledger.record(await client.call_tool("skill_create", {
                    "name": name, "description": _text(rng, 8), "body": f"print({n})"}))
                if body:
                    ledger.created[name] = body["id"]
                    ledger.ack_version(body["id"], body["version"])
                    own.append(body["id"])
            elif roll < 0.55:
                target = rng.choice(hot_ids) if hot_ids and rng.random() < 0.5 else rng.choice(own)
                args: dict[str, Any] = {"skill_id": target, "description": _text(rng, 6)}
                if rng.random() < 0.3:
                    args["body"] = f"# {_text(rng, 3)}\nprint({n})"
                body = ledger.record(await client.call_tool("skill_update", args))
                if body:
                    ledger.ack_version(body["id"], body["version"])
            elif roll < 0.60 and len(own) > 1:
                target = own.pop(rng.randrange(len(own)))
                body = ledger.record(await client.call_tool("skill_delete", {"skill_id": target}))
                if body:
                    ledger.acknowledged += 1
                    ledger.deleted.add(target)
            elif roll < 0.80:
                ledger.record(await client.call_tool("skill_search", {
                    "query": _text(rng, 3), "mode": rng.choice(["hybrid", "keyword", "vector"])}))
            elif roll < 0.90:
                ledger.record(await client.call_tool("skill_list_summary", {"limit": 50}))
            else:
                ledger.record(await client.call_tool("skill_get_detail", {"skill_id": rng.choice(own)}))


async def write_until_killed(server: ServerProcess, ledger: Ledger, writes: int, *, seed: int, writers: int = 4,
                             timeout_s: float = 120) -> None:
    """`writers` sessions write until `writes` more are acknowledged; then the server is SIGKILLed mid-write."""
    import anyio

    target = ledger.acknowledged + writes

    async def writer(n: int) -> None:
        with contextlib.suppress(Exception):  # the connection dies with the server
            await session(server.url, ledger, seed=seed + n)

    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(writer, n)
        with anyio.fail_after(timeout_s):
            while ledger.acknowledged < target:
                await anyio.sleep(0.005)
        server.kill()
        tg.cancel_scope.cancel()


async def create_hot_skills(url: str, ledger: Ledger, count: int = 3) -> tuple[int, ...]:
    """Skills every session updates at once."""
    from mcp import Client

    ids = []
    async with Client(url) as client:
        for i in range(count):
            body = ledger.record(await client.call_tool("skill_create", {
                "name": f"hot-{i}-{random.randrange(10**9)}", "description": f"shared skill {i}", "body": "print(1)"}))
            assert body, "could not create a hot skill"
            ledger.created[body["name"]] = body["id"]
            ledger.ack_version(body["id"], body["version"])
            ids.append(body["id"])
    return tuple(ids)


# ---------------------------------------------------------------------------------- the checks

def verify(db_path: Path, ledger: Ledger) -> dict[str, Any]:
    """Acknowledged writes against the database, and the consistency of every active skill."""
    from embeddings import content_hash
    from selfmcp import skillmd
    from selfmcp.search import index_texts

    conn = sqlite3.connect(db_path)
    try:
        integrity = conn.execute("pragma integrity_check").fetchone()[0]
        rows = {r[0]: r for r in conn.execute("select id, name, version, is_active, description, body from skills")}
        by_name = {r[1]: r[0] for r in rows.values()}
        versions: dict[int, set[int]] = {}
        for skill_id, version in conn.execute("select skill_id, version from skill_versions"):
            versions.setdefault(skill_id, set()).add(version)
        fts = {r[0] for r in conn.execute("select rowid from skills_fts")}
        summary = {r[0] for r in conn.execute("select id from skill_summary_cache")}
        vectors = dict(conn.execute("select skill_id, content_hash from skill_embeddings"))
    finally:
        conn.close()
    lost = []
    for name, skill_id in ledger.created.items():
        if by_name.get(name) != skill_id:
            lost.append(f"create {name}")
    for skill_id, version in ledger.versions.items():
        row = rows.get(skill_id)
        if row is None or row[2] < version:
            lost.append(f"version {version} of {skill_id}")
    for skill_id in ledger.deleted:
        if skill_id in rows and rows[skill_id][3]:
            lost.append(f"delete {skill_id}")
    torn = []
    for skill_id, (_, name, version, active, description, body) in rows.items():
        if versions.get(skill_id, set()) != set(range(1, version + 1)):
            torn.append(f"{skill_id}: versions {sorted(versions.get(skill_id, set()))[-3:]} for version {version}")
        if not active:
            continue
        if skill_id not in fts or skill_id not in summary:
            torn.append(f"{skill_id}: FTS or summary row missing")
        text = index_texts(name, description, skillmd.parse_body(body).frontmatter)[1]
        if vectors.get(skill_id) != content_hash(text):
            torn.append(f"{skill_id}: embedding {'missing' if skill_id not in vectors else 'of an older text'}")
    return {"integrity": integrity, "skills": len(rows), "lost_writes": len(lost), "torn_skills": len(torn),
            "lost_examples": lost[:5], "torn_examples": torn[:5]}
