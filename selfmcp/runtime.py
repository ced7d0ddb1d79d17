"""The execution runtime: from a prepared run to a recorded, redacted result.

`Runtime` is built once from a validated `ExecutionConfig`. `Runtime.run(prepared)` builds or
reuses the dependency environment, gives the run its environment (never the server's own
secrets), runs it through `executor.Runner` confined by selfmcp/confine.py, records it in
skill_runs (by one writer thread, off the reply's path) and redacts every secret value from what
it returns.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import executor
from selfmcp import confine, core_skills, credentials, depenv, folders, redact, schemas
from selfmcp.errors import SandboxUnavailable
from selfmcp.secret_links import SecretLinks
from selfmcp.store import SkillStore, Statements, now_text
from selfmcp.vault import Vault, missing_error

log = logging.getLogger("selfmcp.runtime")

RUN_HISTORY_PER_SKILL = 100
SKILL_ENV_MODES = ("inherit", "declared")
# What a run gets under SELFMCP_SKILL_ENV=declared, besides the variables its auth_config names.
DECLARED_BASELINE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
                         "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# The server's own credentials: a skill holding them could sign in as the owner or open the vault, so no run
# ever gets them, whatever SELFMCP_SKILL_ENV says.
SERVER_ONLY_ENV = frozenset({"SELFMCP_AUTH_TOKEN", "SELFMCP_OWNER_PASSWORD", "SELFMCP_SECRET_KEY"})

Progress = Callable[[float, float | None, str], Awaitable[None]]


class ExecutionConfigError(ValueError):
    """An execution setting that cannot work here (the server should not start with it)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """How skill_execute runs code; server.Settings fills it from the SELFMCP_* variables."""

    env_dir: Path | None = None  # None: "envs" beside the database
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    concurrency: int = 4
    sandbox: str = "auto"  # auto | bwrap | none
    sandbox_network: bool = True
    skill_env: str = "inherit"  # inherit | declared
    max_processes: int = 128  # per run, in total
    workdir_mb: int = 256  # per run (a tmpfs under bubblewrap)
    allow_source_builds: bool = False  # dependency installs may run a package's build code
    public_bind: bool = False  # served beyond loopback: refuse unconfined runs unless SELFMCP_SANDBOX=none


@dataclass(frozen=True)
class PreparedRun:
    """Everything checked before a run: which skill version, its code, params, limits and needs."""

    skill_id: int
    name: str
    version: int
    code: str
    params_json: str
    timeout_s: float
    requirements: tuple[str, ...]
    auth_vars: tuple[str, ...]
    files: Mapping[str, bytes] = field(default_factory=dict)  # the skill folder, written into the workdir
    script: str = "skill.py"  # where `code` sits in that folder
    # The skill's vault values (selfmcp/vault.py): set in this run's environment over the server's, and redacted.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    extra_env: Mapping[str, str] = field(default_factory=dict)  # not secret (e.g. the vault's entry names)


def prepare(row: Any, params_json: str, timeout_s: float, started: float, *, store: SkillStore, vault: Vault,
            links: SecretLinks, environ: Mapping[str, str]) -> PreparedRun:
    """The run of the stored skill `row`: params checked against its schema, its credentials found, its folder.

    Raises the errors a client can act on (invalid_params, missing_credentials, not_executable).
    The time spent here (since `started`, monotonic) counts against `timeout_s`.
    """
    schema = json.loads(row["params_schema_json"]) if row["params_schema_json"] else None
    if schema:
        schemas.check_run_params(schema, json.loads(params_json), row, timeout_s=timeout_s, started=started)
    auth = json.loads(row["auth_config_json"]) if row["auth_config_json"] else None
    secrets = vault.values_for(row["id"], auth) if auth else {}
    missing = credentials.missing_env_vars(auth, environ, secrets)
    if missing:
        raise missing_error(row["id"], row["name"], missing, environ, *links.offer(row["id"]))
    run, files = folders.SkillFolders(store).runnable(row)
    return PreparedRun(row["id"], row["name"], row["version"], run.code, params_json,
                       max(timeout_s - (time.monotonic() - started), 0.1),
                       tuple(json.loads(row["dependencies_json"] or "[]")), tuple(credentials.required_env_vars(auth)),
                       files, run.script, secrets, core_skills.run_env(row, vault))


class Runtime:
    """What runs need across calls: the runner (and its concurrency slots), environments, the redactor."""

    def __init__(self, config: ExecutionConfig, store: SkillStore, environ: Mapping[str, str], *,
                 python: str | None = None) -> None:
        if config.skill_env not in SKILL_ENV_MODES:
            raise ExecutionConfigError(f"Unknown skill environment mode {config.skill_env!r}; use inherit or declared.")
        self.config = config
        self.store = store
        self.environ = environ
        self.python = python or sys.executable
        db_dir = Path(os.path.abspath(store.db.path)).parent
        hidden = [db_dir, Path(__file__).resolve().parents[1], Path.cwd()]
        try:
            self.sandbox = confine.resolve_sandbox(config.sandbox, network=config.sandbox_network, hidden=hidden)
        except (RuntimeError, ValueError) as exc:
            raise ExecutionConfigError(str(exc)) from None
        # No run (of any uid) can read this process's environment through /proc.
        self.not_dumpable = confine.make_not_dumpable()
        self.runner = confine.runner(
            self.sandbox, limits=executor.Limits(memory_mb=config.memory_mb, max_output_bytes=config.max_output_bytes,
                                                 processes=config.max_processes, workdir_mb=config.workdir_mb),
            concurrency=config.concurrency)
        self.redactor = redact.Redactor.from_environ(environ)
        self.envs = depenv.EnvCache(config.env_dir or db_dir / "envs", environ=environ, sandbox=self.sandbox,
                                    allow_source_builds=config.allow_source_builds, redact=self.redactor.redact)
        # What selfmcp_about reports as in force (the same words as the start-up log).
        self._sandbox_info = json.dumps(self.describe()["in_force"], sort_keys=True)
        # One writer for skill_runs, so records land in order and a flush is one no-op task.
        self._history = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfmcp-runs")

    def describe(self) -> dict[str, Any]:
        """How skills run (sandbox, limits, environments), for the start-up log."""
        return {"sandbox": self.sandbox.mode, "sandbox_note": self.sandbox.note,
                "sandbox_network": self.sandbox.network, "skill_env": self.config.skill_env,
                "memory_mb": self.config.memory_mb, "max_output_bytes": self.config.max_output_bytes,
                "concurrency": self.config.concurrency, "env_dir": str(self.envs.root),
                "installer": self.envs.installer, "redacted_variables": len(self.redactor.names),
                "source_builds": self.config.allow_source_builds, "refused": self.refuses_runs,
                "in_force": self.runner.confinement.in_force() | {
                    "server_environ": "unreadable to runs (the server is not dumpable)" if self.not_dumpable
                    else "READABLE by runs of the server's uid (prctl failed)"}}

    @property
    def refuses_runs(self) -> bool:
        """No confinement at all on a public bind, and the owner did not accept that with SELFMCP_SANDBOX=none."""
        return self.sandbox.mode == "none" and not self.sandbox.explicit and self.config.public_bind

    def skill_environment(self, auth_vars: tuple[str, ...]) -> dict[str, str]:
        """The environment a run gets: the server's whole environment, or only the declared part."""
        if self.config.skill_env == "inherit":
            return {k: v for k, v in self.environ.items() if k not in SERVER_ONLY_ENV}
        names = (*DECLARED_BASELINE_ENV, *auth_vars)
        return {n: self.environ[n] for n in names if n in self.environ and n not in SERVER_ONLY_ENV}

    # -- run history

    def record_run(self, skill_id: int, version: int, started_at: str, duration_ms: float, **fields: Any) -> None:
        """Add a run to skill_runs, keeping only the newest RUN_HISTORY_PER_SKILL of the skill."""
        with self.store.write() as tx:
            tx.insert_run(skill_id, version, started_at, duration_ms, keep=RUN_HISTORY_PER_SKILL, **fields)

    def flush_history(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued run record is written."""
        self._history.submit(lambda: None).result(timeout_s)

    def _record_later(self, prepared: PreparedRun, started_at: str, duration_ms: float, **fields: Any) -> None:
        self._history.submit(_log_failure, self.record_run, prepared.skill_id, prepared.version, started_at,
                             duration_ms, **fields)

    # -- running

    async def run(self, prepared: PreparedRun, progress: Progress | None = None) -> dict[str, Any]:
        """Run `prepared`, record it, and return its redacted result.

        Raises depenv.InstallFailed (message and tail already redacted) when its dependencies
        cannot be installed; a crash, timeout or cancellation of the skill itself is a result.
        """
        import anyio

        if self.refuses_runs:
            raise SandboxUnavailable(f"This server is reachable beyond loopback and cannot confine skill runs: "
                                     f"{self.sandbox.note}.")
        redactor = self.redactor.including(prepared.secrets.items())
        started_at, started = now_text(), time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 1)

        try:
            python, read_only, environment = self.python, (), None
            if prepared.requirements:
                try:
                    built = await self.envs.ensure(prepared.requirements, progress)
                except depenv.InstallFailed as exc:
                    self._record_later(prepared, started_at, elapsed(), error="dependency_install_failed")
                    raise depenv.InstallFailed(
                        redactor.redact(f"Installing {', '.join(prepared.requirements)} failed: {exc}"),
                        [redactor.redact(line) for line in exc.tail]) from None
                python, read_only = built.python, (str(built.path),)
                environment = {"requirements": list(built.requirements), "key": built.key,
                               "installed_now": built.built_now}
                if built.built_now:
                    environment["install_ms"] = built.build_ms
            env = {**self.skill_environment(prepared.auth_vars), "SELFMCP_SANDBOX_INFO": self._sandbox_info,
                   **prepared.extra_env, **prepared.secrets}
            result = await self.runner.run(
                prepared.code, prepared.params_json, env=env,
                timeout_s=prepared.timeout_s, python=python, read_only=read_only, files=prepared.files,
                script=prepared.script)
        except anyio.get_cancelled_exc_class():
            self._record_later(prepared, started_at, elapsed(), cancelled=True)
            raise
        self._record_later(prepared, started_at, result.duration_ms, exit_code=result.exit_code,
                           timed_out=result.timed_out, stdout_bytes=result.stdout_bytes,
                           stderr_bytes=result.stderr_bytes)
        out: dict[str, Any] = {
            "skill_id": prepared.skill_id, "name": prepared.name, "version": prepared.version,
            "stdout": redactor.redact(result.stdout, truncated=result.stdout_truncated),
            "stderr": redactor.redact(result.stderr, truncated=result.stderr_truncated),
            "exit_code": result.exit_code, "timed_out": result.timed_out, "duration_ms": result.duration_ms,
            "stdout_bytes": result.stdout_bytes, "stderr_bytes": result.stderr_bytes,
            "stdout_truncated": result.stdout_truncated, "stderr_truncated": result.stderr_truncated,
            "sandbox": result.sandbox,
        }
        if result.queued_ms >= 1:
            out["queued_ms"] = result.queued_ms
        if environment is not None:
            out["environment"] = environment
        if result.stdout_truncated or result.stderr_truncated:
            out["note"] = (f"Output beyond {self.config.max_output_bytes} bytes per stream was dropped; "
                           "stdout_bytes and stderr_bytes say how much the skill wrote.")
        return out


def run_stats(tx: Statements, skill_id: int) -> dict[str, Any]:
    """The run history of a skill summed up: count, success rate, last run, median duration."""
    rows = tx.runs(skill_id)
    if not rows:
        return {"count": 0, "success_rate": None, "last_run_at": None, "last_exit_code": None,
                "median_duration_ms": None}
    ok = sum(1 for r in rows if r["exit_code"] == 0 and not r["timed_out"] and not r["cancelled"]
             and r["error"] is None)
    return {"count": len(rows), "success_rate": round(ok / len(rows), 3), "last_run_at": rows[0]["started_at"],
            "last_exit_code": rows[0]["exit_code"],
            "median_duration_ms": round(statistics.median(r["duration_ms"] for r in rows), 1)}


def _log_failure(write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        write(*args, **kwargs)
    except sqlite3.Error:
        log.warning("could not record a skill run", exc_info=True)
