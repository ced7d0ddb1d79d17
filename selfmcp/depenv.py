"""Dependency environments: one cached virtual environment per set of requirements.

A skill's `dependencies` are pip requirement strings. `normalise_requirements()` accepts
only PEP 508 requirements naming a package from an index: installer options (`-e`,
`--index-url`), local paths and URLs (`file:`, `git+`, `pkg @ https://...`) are refused
before any installer runs.

`EnvCache.ensure()` gives the interpreter of an environment holding exactly those
requirements. Environments live in `<root>/<key>`, where the key hashes the normalised
requirement set and the Python version. The first call for a set builds it with uv
(`uv venv` + `uv pip install`), or with `python -m venv` + pip when uv is absent; a file
written last marks it ready, so later calls only check that file and run no installer.
Concurrent first calls build once: a lock per key in this process, and a lock file
between processes. A failed (or cancelled) build removes what it made.

Installs are as contained as runs. The installer gets a minimal environment: no secret and
no SELFMCP_* variable, only PATH, locale and certificate settings and the index settings
(UV_INDEX_URL / PIP_INDEX_URL, UV_EXTRA_INDEX_URL / PIP_EXTRA_INDEX_URL, UV_FIND_LINKS /
PIP_FIND_LINKS, PIP_NO_INDEX / UV_NO_INDEX; a setting given only in the other installer's
spelling is translated), with HOME, cache and TMPDIR inside the environments directory. It
runs in the same sandbox as skills (bubblewrap with the database and server directories
hidden, or Landlock), with write access only to the environments directory (created 0700).
Only wheels are installed (`uv --no-build`, `pip --only-binary :all:`) unless the owner sets
SELFMCP_ALLOW_SOURCE_BUILDS=1: a source build runs the package's own code. Every line of the
installer's output is redacted before it becomes a progress message or an error's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfmcp import confine, landlock

log = logging.getLogger("selfmcp.depenv")

READY_FILE = ".selfmcp-ready"
INSTALL_TIMEOUT_S = 600.0
TAIL_LINES = 20
MAX_REQUIREMENT_CHARS = 512
_LOCK_POLL_S = 0.05

# (done, total, message): called while an environment is built.
Progress = Callable[[float, float | None, str], Awaitable[None]]


class InvalidRequirement(ValueError):
    """A dependency string that is not an installable PEP 508 requirement."""

    def __init__(self, requirement: str, reason: str) -> None:
        super().__init__(f"Invalid requirement {requirement!r}: {reason}.")
        self.requirement = requirement
        self.reason = reason


class InstallFailed(RuntimeError):
    """The installer could not build an environment; `tail` holds its last output lines."""

    def __init__(self, message: str, tail: list[str]) -> None:
        super().__init__(message)
        self.tail = tail


@dataclass(frozen=True)
class Environment:
    python: str
    path: Path
    key: str
    requirements: tuple[str, ...]
    built_now: bool = False
    build_ms: float = 0.0


def normalise_requirement(text: str) -> str:
    """The canonical spelling of one requirement; raises InvalidRequirement."""
    from packaging.requirements import InvalidRequirement as _PackagingInvalid  # lazily: not needed at start-up
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(text, str) or not text.strip():
        raise InvalidRequirement(str(text), "it is empty")
    text = text.strip()
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise InvalidRequirement(text[:40] + "...", f"it is longer than {MAX_REQUIREMENT_CHARS} characters")
    if text.startswith("-"):
        raise InvalidRequirement(text, "installer options are not allowed")
    if any(c in text for c in "\r\n\0"):
        raise InvalidRequirement(text, "it spans several lines")
    try:
        req = Requirement(text)
    except _PackagingInvalid as exc:
        first = str(exc).splitlines()[0] if str(exc) else "not a PEP 508 requirement"
        raise InvalidRequirement(text, f"not a PEP 508 requirement ({first})") from None
    if req.url:
        raise InvalidRequirement(text, "URLs and local paths are not allowed; name a package and a version range")
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in req.extras))}]" if req.extras else ""
    specifier = ",".join(sorted(str(s) for s in req.specifier))
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{specifier}{marker}"


def normalise_requirements(requirements: Sequence[str]) -> tuple[str, ...]:
    """Canonical, de-duplicated, sorted requirements; raises InvalidRequirement on the first bad one."""
    return tuple(sorted({normalise_requirement(r) for r in requirements}))


def python_tag() -> str:
    """What an environment built by this server depends on besides its requirements."""
    impl = sys.implementation
    return f"{impl.name}-{platform.python_version()}-{sys.platform}-{platform.machine()}"


def env_key(requirements: Sequence[str]) -> str:
    blob = json.dumps({"python": python_tag(), "requirements": list(requirements)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def find_uv() -> str | None:
    """The uv binary: the one the `uv` package ships, else one on PATH."""
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return shutil.which("uv")


def base_python() -> str:
    """The interpreter environments are built from (the real one behind a venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


# The only variables an installer gets from the server's environment.
INSTALLER_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                 "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                 "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX",
                 "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX",
                 "UV_NO_CONFIG", "UV_PYTHON_DOWNLOADS", "PIP_CONFIG_FILE")


def installer_environ(environ: Mapping[str, str], installer: str) -> dict[str, str]:
    """The installer's variables of `environ`, index settings also spelled the way `installer` reads them."""
    env = {k: environ[k] for k in INSTALLER_ENV if k in environ}
    pairs = [("UV_INDEX_URL", "PIP_INDEX_URL"), ("UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"),
             ("UV_FIND_LINKS", "PIP_FIND_LINKS")]
    for uv_name, pip_name in pairs:
        if installer == "uv" and not env.get(uv_name) and env.get(pip_name):
            value = env[pip_name]
            env[uv_name] = ",".join(value.split()) if uv_name == "UV_FIND_LINKS" else value
        elif installer == "pip" and not env.get(pip_name) and env.get(uv_name):
            value = env[uv_name]
            env[pip_name] = " ".join(value.replace(",", " ").split()) if pip_name == "PIP_FIND_LINKS" else value
    env.pop("VIRTUAL_ENV", None)  # the server's own venv must not be the install target
    env.pop("PYTHONPATH", None)
    return env


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class EnvCache:
    """Environments under `root`, built with `uv` (or venv + pip when `uv` is None)."""

    def __init__(self, root: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None,
                 uv: str | None | bool = True, python: str | None = None,
                 install_timeout_s: float = INSTALL_TIMEOUT_S, sandbox: confine.Sandbox | None = None,
                 allow_source_builds: bool = False, redact: Callable[[str], str] = str) -> None:
        self.root = Path(root)
        self.sandbox = sandbox or confine.Sandbox()
        self.allow_source_builds = allow_source_builds
        self.redact = redact
        self.environ = os.environ if environ is None else environ
        self.uv = find_uv() if uv is True else (uv or None)
        self.python = python or base_python()
        self.install_timeout_s = install_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def installer(self) -> str:
        return "uv" if self.uv else "pip"

    def path_for(self, requirements: Sequence[str]) -> Path:
        return self.root / env_key(requirements)

    @staticmethod
    def _python_in(path: Path) -> Path:
        return path / "bin" / "python"

    def ready(self, requirements: Sequence[str]) -> Environment | None:
        """The environment for these (normalised) requirements if it is built, else None."""
        path = self.path_for(requirements)
        if (path / READY_FILE).is_file():
            return Environment(str(self._python_in(path)), path, path.name, tuple(requirements))
        return None

    async def ensure(self, requirements: Sequence[str], progress: Progress | None = None) -> Environment:
        """The environment for these (normalised) requirements, built first if needed.

        Raises InstallFailed when the installer fails or takes longer than the install timeout.
        """
        found = self.ready(requirements)
        if found is not None:
            return found
        key = env_key(requirements)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.ready(requirements)
            if found is not None:
                return found
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.root / f".{key}.lock", "a+b") as lock_file:
                await _flock(lock_file.fileno())
                try:
                    found = self.ready(requirements)  # another server process built it meanwhile
                    if found is not None:
                        return found
                    return await self._build(key, tuple(requirements), progress)
                finally:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    async def _build(self, key: str, requirements: tuple[str, ...], progress: Progress | None) -> Environment:
        path = self.root / key
        started = time.perf_counter()
        report = _Reporter(progress)
        if path.exists():  # a build that died half-way (server killed)
            shutil.rmtree(path)
        env = installer_environ(self.environ, self.installer)
        for name, sub in (("HOME", ".home"), ("TMPDIR", ".tmp"), ("UV_CACHE_DIR", ".cache/uv"),
                          ("PIP_CACHE_DIR", ".cache/pip"), ("XDG_CACHE_HOME", ".cache")):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            env[name] = str(self.root / sub)
        try:
            await report(0, f"Creating a Python environment for {', '.join(requirements)} with {self.installer}")
            if self.uv:
                create = [self.uv, "venv", "--quiet", "--no-project", "--python", self.python, str(path)]
                install = [self.uv, "pip", "install", "--python", str(self._python_in(path)), "--compile-bytecode"]
                if _truthy(env.get("PIP_NO_INDEX")) or _truthy(env.get("UV_NO_INDEX")):
                    install.append("--no-index")
                if not self.allow_source_builds:
                    install.append("--no-build")
            else:
                create = [self.python, "-m", "venv", str(path)]
                install = [str(self._python_in(path)), "-m", "pip", "install", "--disable-pip-version-check",
                           "--no-input", "--progress-bar", "off"]
                if not self.allow_source_builds:
                    install += ["--only-binary", ":all:"]
            deadline = time.monotonic() + self.install_timeout_s
            await self._run_installer(create, env, deadline, report)
            await report(1, f"Installing {len(requirements)} requirement(s)")
            await self._run_installer([*install, "--", *requirements], env, deadline, report)
            meta = {"requirements": list(requirements), "python": python_tag(), "installer": self.installer,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (path / READY_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        build_ms = round((time.perf_counter() - started) * 1000, 1)
        await report(2, f"Environment ready in {build_ms / 1000:.1f} s", total=2)
        log.info("built dependency environment %s (%s) in %.1f s", key, ", ".join(requirements), build_ms / 1000)
        return Environment(str(self._python_in(path)), path, key, requirements, built_now=True, build_ms=build_ms)

    async def _run_installer(self, argv: list[str], env: Mapping[str, str], deadline: float,
                             report: _Reporter) -> None:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        command, pass_fds = self._confined(argv, env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=str(self.root), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                pass_fds=pass_fds)
        except OSError as exc:
            raise InstallFailed(f"The installer could not be started: {exc}.", [str(exc)]) from None
        finally:
            for fd in pass_fds:
                os.close(fd)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                assert proc.stdout is not None
                while line := await proc.stdout.readline():
                    text = self.redact(line.decode("utf-8", "replace").rstrip())
                    if text:
                        tail.append(text)
                        await report.line(text)
                await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            raise InstallFailed(f"The installer took longer than {self.install_timeout_s:.0f} s.", list(tail)) from None
        except BaseException:
            _kill_group(proc.pid)
            raise
        if proc.returncode != 0:
            name = Path(argv[0]).name
            raise InstallFailed(f"{name} {argv[1]} exited with status {proc.returncode}.", list(tail))


    def _confined(self, argv: list[str], env: Mapping[str, str]) -> tuple[list[str], list[int]]:
        """`argv` inside the runs' sandbox, writing only under the root; the fds the child must inherit."""
        reads = [os.path.dirname(os.path.realpath(argv[0])), *_local_links(env)]
        mode = self.sandbox.mode
        if mode == "bwrap":
            sandbox = dataclasses.replace(self.sandbox, network=True, setpriv=None)
            root = str(self.root.resolve())
            mounts = confine.bwrap_mounts(sandbox, python=self.python, read_only=reads)
            return [*mounts, "--bind", root, root, "--chdir", root, "--remount-ro", "/", *argv], []
        if mode == "landlock":
            fd = landlock.landlock_ruleset(hidden=self.sandbox.hidden, read=[*confine.python_roots(self.python), *reads],
                                          write=[str(self.root.resolve())], network=True)
            launcher = landlock.LANDLOCK_PRELUDE.format(fd=fd) + f"import os\nos.execv({argv[0]!r}, {argv!r})\n"
            return [sys.executable, "-S", "-c", launcher], [fd]
        return argv, []


def _local_links(env: Mapping[str, str]) -> list[str]:
    """Local directories named as find-links (the installer must read them)."""
    found = []
    for name in ("UV_FIND_LINKS", "PIP_FIND_LINKS"):
        for item in env.get(name, "").replace(",", " ").split():
            path = item[len("file://"):] if item.startswith("file://") else item
            if os.path.isabs(path) and os.path.isdir(path):
                found.append(path)
    return found


class _Reporter:
    """Progress for one build: stages 0 -> 1 -> 2, installer lines in between (always increasing)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.stage = 0.0
        self.lines = 0

    async def __call__(self, stage: float, message: str, total: float | None = 2) -> None:
        self.stage, self.lines = stage, 0
        await self._send(stage, total, message)

    async def line(self, message: str) -> None:
        self.lines += 1
        await self._send(self.stage + self.lines / (self.lines + 1), 2, message)

    async def _send(self, done: float, total: float | None, message: str) -> None:
        if self.progress is None:
            return
        try:
            await self.progress(done, total, message[:500])
        except Exception:  # a client that cannot take progress must not fail the install
            log.debug("progress notification failed", exc_info=True)


async def _flock(fd: int) -> None:
    """Take an exclusive lock on `fd` without blocking the event loop."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(_LOCK_POLL_S)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)
