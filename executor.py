"""Run skill code in a subprocess: its own working directory, process group, limits and sandbox.

`Runner.run()` is a coroutine, so the server keeps answering other calls while a skill
runs. Each run gets:

- a fresh working directory (also its TMPDIR), removed afterwards;
- its own session and process group, and a token (SELFMCP_RUN_ID) in its environment;
- resource limits set by a short prelude in the skill's own interpreter before the
  skill's code runs (address space, CPU time, file size, no core files), so no
  `preexec_fn` runs in the server;
- at most `max_output_bytes` kept of each of stdout and stderr, while the bytes
  produced are still counted;
- the confinement it is given (`Runner(confinement=...)`): how the run's first process
  is started (a sandbox's argv, file descriptors, environment) and how every process of the
  run is found and killed. selfmcp/confine.py builds the real ones (bubblewrap, Landlock, a
  uid per slot, cgroups); without one a run is only its own session (`Unconfined`).
  This module imports no module of the project: the sandbox is plugged in, not imported.

The skill's code, params and compiled code are written to `<workdir>/.in`, read-only in
the sandbox; params longer than `_PARAMS_IN_ENV` reach SELFMCP_PARAMS through that file
(Linux caps one environment string at 128 KiB).

Started ahead: a subclass (selfmcp/warm.py) may hand a run a process started before it,
waiting for its prelude on stdin (`_take_warm` and the other hooks at the end of `Runner`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass

log = logging.getLogger("selfmcp.executor")

# SELFMCP_PARAMS up to this many characters goes in the environment; longer ones by file.
_PARAMS_IN_ENV = 64 * 1024
RUN_ID_VAR = "SELFMCP_RUN_ID"
# How long to keep reading a finished run's pipes once its processes are killed.
_DRAIN_AFTER_KILL_S = 0.5
_READ_CHUNK = 1 << 16

# Runs in the skill's interpreter before its code: set the limits (soft = hard, so the
# skill cannot raise them back; never above a hard limit the server already has), then
# run the script as `python skill.py` would, in __main__, and end as the interpreter would
# (threads joined, atexit handlers, open files flushed, the same exit status) but through
# os._exit, without tearing every module down (~2-3 ms). {load} puts the code object in
# `_c`: unmarshalled from what the server compiled when the interpreter is the server's
# own (a first compile() in a fresh interpreter costs ~2 ms), else compiled from source.
_PRELUDE = """\
import resource as _r, sys as _s
for _k, _v in ({limits}):
    _h = _r.getrlimit(_k)[1]
    _v = _v if _h == _r.RLIM_INFINITY else min(_v, _h)
    _r.setrlimit(_k, (_v, _v))
{files}def _hook(t, v, tb, _print=_s.__excepthook__):
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next  # drop this prelude's frame from the skill's tracebacks
    if isinstance(v, BaseException):
        v.__traceback__ = tb
    _print(t, v, tb)
_s.excepthook = _hook
_p = {script!r}
_s.argv[:] = [_p]
_s.path[0] = {script_dir!r}
__file__ = _p
{load}
{params}def _main(_c, _s=_s):
    try:
        exec(_c, _s.modules["__main__"].__dict__)
    except SystemExit as _e:
        _x = 0 if _e.code is None else _e.code
        if not isinstance(_x, int):
            print(_x, file=_s.stderr)
            _x = 1
    except KeyboardInterrupt:
        raise
    except BaseException:
        _s.excepthook(*_s.exc_info())
        _x = 1
    else:
        _x = 0
    import atexit, gc, io, os
    try:  # what the interpreter does at exit, but tearing down modules (~2-3 ms)
        if "threading" in _s.modules:
            _s.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
        for _o in gc.get_objects():  # files the skill left open keep what it wrote
            if type(_o) in (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom) and not _o.closed:
                try:
                    _o.flush()
                except Exception:
                    pass
    finally:
        os._exit(_x & 255)
del _r, _s, _k, _v, _h, _p, _f, _hook
globals().pop("_main")(globals().pop("_c"))
"""
_LOAD_SOURCE = """with open({code_path!r}, "rb") as _f:
    _c = compile(_f.read(), _p, "exec")"""
_LOAD_MARSHAL = """import marshal
with open({code_path!r}, "rb") as _f:
    _c = marshal.loads(_f.read())
del marshal"""
# A skill's files, written by the server under .in/files, become the run's working directory's own.
_FILES = """import os as _o, shutil as _sh
for _d, _ds, _fs in _o.walk({src!r}):
    _t = _o.path.join({dst!r}, _o.path.relpath(_d, {src!r}))
    _o.makedirs(_t, exist_ok=True)
    for _n in _fs:
        _sh.copyfile(_o.path.join(_d, _n), _o.path.join(_t, _n))
del _o, _sh, _d, _ds, _fs, _t
"""
_PARAMS_FILE = """import os as _o
with open({path!r}, encoding="utf-8") as _f:
    _o.environ["SELFMCP_PARAMS"] = _f.read()
del _o
"""
# Code larger than this is compiled in a worker thread rather than on the event loop.
_INLINE_COMPILE_CHARS = 32 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. 0 means "no limit" for the sizes."""

    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    file_size_mb: int = 256
    cpu_s: int | None = None  # None: the run's timeout, rounded up, plus one second
    processes: int = 128  # per run, in total (cgroup; else RLIMIT_NPROC of the slot's uid)
    workdir_mb: int = 256  # size of the working directory (a tmpfs under bubblewrap)


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    duration_ms: float
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    queued_ms: float = 0.0
    sandbox: str = "none"


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat uses for start times."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)


class Unconfined:
    """A Runner's confinement when it is given none: a run is only its own session and process group.

    The interface every confinement offers (selfmcp.confine.Confinement is the real one):
    `mode` (reported with each result), `workdir_at_start` (the working directory must exist
    when a sandbox starts ahead of its run), `private_pids`, `command()`, `own_uid()` and `kill()`.
    """

    mode = "none"
    workdir_at_start = False
    private_pids = False  # a PID namespace of its own: no other run sees its processes

    def command(self, first: str, *, python: str, read_only: Sequence[str], workdir: str | None, slot: int,
                env: dict[str, str]) -> tuple[list[str], list[int]]:
        """The argv that starts a run's first process running the Python code `first`, and fds it keeps."""
        return [python, "-c", first], []

    def own_uid(self, slot: int) -> bool:
        """Whether the slot's runs have a uid to themselves (so RLIMIT_NPROC bounds the run's total)."""
        return False

    def kill(self, session: int, token: bytes, since_ticks: int, slot: int, *, thorough: bool) -> None:
        """SIGKILL every process of the run started as `session` (its environment carries `token`)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)


class _Capture:
    """One output stream: the first `cap` bytes kept, every byte counted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


class _Watch:
    """Follows one child from the event loop: its output as it arrives, its exit, its pipes closing.

    The exit is seen through a pidfd (no thread per child, unlike asyncio's default child
    watcher in Python 3.11); a worker thread waits instead where pidfds are missing.
    """

    def __init__(self, proc: subprocess.Popen[bytes], cap: int, loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.loop = loop
        self.stdout = _Capture(cap)
        self.stderr = _Capture(cap)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._fds: list[int] = []
        for stream, capture in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, fd, capture)
            self._fds.append(fd)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            loop.run_in_executor(None, proc.wait).add_done_callback(lambda _: self._set(self.exited))
        else:
            loop.add_reader(self._pidfd, self._poll)

    def _read(self, fd: int, capture: _Capture) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            capture.add(data)
            return
        self.loop.remove_reader(fd)
        self._fds.remove(fd)
        if not self._fds:
            self._set(self.closed)

    def _poll(self) -> None:
        if self.proc.poll() is not None:
            self._close_pidfd()
            self._set(self.exited)

    @staticmethod
    def _set(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Stop watching; reap the child (in a worker thread if it has not exited yet)."""
        for fd in self._fds:
            self.loop.remove_reader(fd)
        self._fds.clear()
        self._close_pidfd()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.proc.poll() is None:
            self.loop.run_in_executor(None, self.proc.wait)


def _rlimits(limits: Limits, timeout_s: float, *, own_uid: bool) -> str:
    pairs = []
    if limits.memory_mb > 0:
        pairs.append(f"(_r.RLIMIT_AS, {limits.memory_mb << 20})")
    cpu = limits.cpu_s if limits.cpu_s is not None else int(timeout_s + 0.999) + 1
    if cpu > 0:
        pairs.append(f"(_r.RLIMIT_CPU, {cpu})")
    if limits.file_size_mb > 0:
        pairs.append(f"(_r.RLIMIT_FSIZE, {limits.file_size_mb << 20})")
    if own_uid and limits.processes > 0:  # the uid belongs to this run alone: a total process bound
        pairs.append(f"(_r.RLIMIT_NPROC, {limits.processes})")
    pairs.append("(_r.RLIMIT_CORE, 0)")
    return ", ".join(pairs) + ","


# ------------------------------------------------------------------------------ runner

class Runner:
    """Runs skills with the given limits and sandbox, at most `concurrency` at a time (one per slot)."""

    def __init__(self, *, limits: Limits | None = None, confinement: Any = None,
                 concurrency: int = 4, tmp_root: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        self.limits = limits or Limits()
        self.confinement = confinement if confinement is not None else Unconfined()
        self.concurrency = concurrency
        # Every run's directory lives in a root of its own: Landlock lets runs write only there.
        self.tmp_root = tempfile.mkdtemp(prefix="selfmcp-runs-", dir=tmp_root)
        os.chmod(self.tmp_root, 0o711)
        self._free = list(range(concurrency))
        self._slots = asyncio.Semaphore(concurrency)
        atexit.register(remove_tree, self.tmp_root)
        # Per interpreter: the answer only changes when files are replaced.
        self._same_interpreter: dict[str, bool] = {}
        atexit.register(self.close)

    async def run(self, code: str, params_json: str, *, env: Mapping[str, str], timeout_s: float,
                  python: str = sys.executable, read_only: Sequence[str] = (),
                  files: Mapping[str, bytes] | None = None, script: str = "skill.py") -> ExecResult:
        """Run `code` with `python`; `params_json` arrives as SELFMCP_PARAMS.

        Waiting for a free slot counts against `timeout_s`. `read_only` names extra
        paths the sandbox shows (a dependency environment).
        """
        python = os.path.abspath(python)  # "/a/../venv/bin/python" would need /a inside the sandbox
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            waited = round((time.perf_counter() - started) * 1000, 1)
            return ExecResult("", "", None, True, waited, queued_ms=waited, sandbox=self.confinement.mode)
        slot = self._pick_slot()
        try:
            await self._slot_ready(slot)
            queued_ms = round((time.perf_counter() - started) * 1000, 1)
            result = await self._run(code, params_json, env=env, deadline=deadline, timeout_s=timeout_s,
                                     python=python, read_only=read_only, slot=slot, files=files or {},
                                     script=script)
        finally:
            self._free.append(slot)
            self._slots.release()
        result.queued_ms = queued_ms
        result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return result

    async def _run(self, code: str, params_json: str, *, env: Mapping[str, str], deadline: float,
                   timeout_s: float, python: str, read_only: Sequence[str], slot: int,
                   files: Mapping[str, bytes], script: str) -> ExecResult:
        warm = self._take_warm(slot, python, read_only, env)
        workdir = warm.workdir if warm is not None and warm.workdir else self._new_workdir()
        try:
            if files:
                # The skill's folder, its code at `script` included, under .in/files: the prelude copies
                # it into the working directory (in bwrap a fresh tmpfs the server cannot write into).
                await asyncio.to_thread(write_files, os.path.join(workdir, ".in", "files"),
                                        {script: code.encode("utf-8"), **files})
            return await self._run_in(workdir, code, params_json, env=env, deadline=deadline, timeout_s=timeout_s,
                                      python=python, read_only=read_only, slot=slot,
                                      script=script if files else None, warm=warm)
        finally:
            # Every process of the run is dead: its directory goes in a worker thread, off the reply's path.
            asyncio.get_running_loop().run_in_executor(None, remove_tree, workdir)
            self._after_run(python, tuple(read_only), dict(env))

    def _new_workdir(self) -> str:
        workdir = tempfile.mkdtemp(prefix="run-", dir=self.tmp_root)
        os.mkdir(os.path.join(workdir, ".in"), 0o755)
        return workdir

    def _spawn(self, first: str, *, python: str, read_only: Sequence[str], workdir: str | None, slot: int,
               env: Mapping[str, str], stdin: int) -> tuple[subprocess.Popen[bytes], str, int]:
        """Start `first` (a prelude, or a stub that waits for one) in the slot's sandbox: it, its token, start."""
        token = secrets.token_hex(12)
        child_env = {**env, "PYTHONUNBUFFERED": "1", RUN_ID_VAR: token}
        if workdir is not None:
            child_env.update(TMPDIR=workdir, TMP=workdir, TEMP=workdir)
        argv, pass_fds = self.confinement.command(first, python=python, read_only=read_only, workdir=workdir,
                                                  slot=slot, env=child_env)
        since = boot_ticks()
        proc = subprocess.Popen(argv, cwd=workdir or self.tmp_root, env=child_env, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=pass_fds)
        return proc, token, since

    async def _run_in(self, workdir: str, code: str, params_json: str, *, env: Mapping[str, str],
                      deadline: float, timeout_s: float, python: str, read_only: Sequence[str],
                      slot: int, script: str | None, warm: Any) -> ExecResult:
        inputs = os.path.join(workdir, ".in")
        code_file = os.path.join(inputs, "skill.py")
        with open(code_file, "w", encoding="utf-8") as fh:
            fh.write(code)
        # Where the code says it lives (__file__, sys.path[0]): its own file, or its place in the skill's folder.
        files = ""
        if script is None:
            script = code_file
        else:
            files = _FILES.format(src=os.path.join(inputs, "files"), dst=workdir)
            script = os.path.join(workdir, script)
        load = _LOAD_SOURCE.format(code_path=code_file)
        same = self._same_interpreter.get(python)
        if same is None:
            same = self._same_interpreter[python] = _same_interpreter(python)
        if same:
            compiled = (_marshal_code(code, script) if len(code) <= _INLINE_COMPILE_CHARS
                        else await asyncio.to_thread(_marshal_code, code, script))
            if compiled is not None:
                code_path = os.path.join(inputs, ".skill.code")
                with open(code_path, "wb") as fh:
                    fh.write(compiled)
                load = _LOAD_MARSHAL.format(code_path=code_path)
        params = ""
        if warm is not None or len(params_json) > _PARAMS_IN_ENV:
            params_path = os.path.join(inputs, "params.json")
            with open(params_path, "w", encoding="utf-8") as fh:
                fh.write(params_json)
            params = _PARAMS_FILE.format(path=params_path)
        prelude = ("" if warm is None else warm.header(workdir)) + _PRELUDE.format(
            limits=_rlimits(self.limits, timeout_s, own_uid=self.confinement.own_uid(slot)), script=script,
            script_dir=workdir if not files else os.path.dirname(script), files=files,
            load=load, params=params)
        loop = asyncio.get_running_loop()
        if warm is None:
            run_env = {**env, "SELFMCP_PARAMS": params_json} if not params else env
            proc, token, since = self._spawn(prelude, python=python, read_only=read_only, workdir=workdir,
                                             slot=slot, env=run_env, stdin=subprocess.DEVNULL)
        else:
            proc, token, since = warm.proc, warm.token, warm.since
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # if it died meanwhile, the run reports how
                proc.stdin.write(prelude.encode("utf-8"))
            with contextlib.suppress(OSError):
                proc.stdin.close()
        watch = _Watch(proc, self.limits.max_output_bytes or sys.maxsize, loop)
        marker = f"{RUN_ID_VAR}={token}".encode()
        timed_out = False
        try:
            done, _ = await asyncio.wait([watch.exited], timeout=max(0.0, deadline - loop.time()))
            timed_out = not done
            # Whatever the skill left behind dies with it.
            self.confinement.kill(proc.pid, marker, since, slot, thorough=timed_out)
            # Every writer is dead now: the pipes close as soon as their last bytes are read.
            await asyncio.wait([watch.exited, watch.closed], timeout=_DRAIN_AFTER_KILL_S)
        except BaseException:  # cancelled by the client: take the whole run down first
            self.confinement.kill(proc.pid, marker, since, slot, thorough=True)
            raise
        finally:
            watch.close()
        out, err = watch.stdout, watch.stderr
        return ExecResult(
            stdout=out.text(), stderr=err.text(), exit_code=proc.returncode, timed_out=timed_out, duration_ms=0.0,
            stdout_bytes=out.total, stderr_bytes=err.total, stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, sandbox=self.confinement.mode,
        )

    # -- hooks for a runner that starts sandboxes ahead of their runs (selfmcp.warm.WarmRunner)

    def _pick_slot(self) -> int:
        return self._free.pop()

    async def _slot_ready(self, slot: int) -> None:
        """Wait until nothing is being started in `slot` any more."""

    def _take_warm(self, slot: int, python: str, read_only: Sequence[str], env: Mapping[str, str]) -> Any:
        """A process started ahead in `slot` that fits this run, waiting for its prelude on stdin, or None.

        It has `proc`, `token`, `since`, `workdir` (None: made with the run) and `header(workdir)`
        (code run before the prelude).
        """
        return None

    def _after_run(self, python: str, read_only: tuple[str, ...], env: dict[str, str]) -> None:
        """Called on the event loop once a run's processes are dead."""

    def close(self) -> None:
        """Release what the runner holds ahead of runs (also done at exit)."""


def _same_interpreter(python: str) -> bool:
    """Whether `python` is the interpreter running the server (so its marshal format is ours)."""
    try:
        return os.path.realpath(python) == os.path.realpath(sys.executable) and bool(sys.executable)
    except OSError:
        return False


def _marshal_code(code: str, filename: str) -> bytes | None:
    """The compiled code, marshalled; None if it does not compile (the child then reports the error)."""
    try:
        return marshal.dumps(compile(code, filename, "exec", dont_inherit=True, optimize=0))
    except (SyntaxError, ValueError):
        return None


def remove_tree(path: str) -> None:
    shutil.rmtree(path, onerror=_log_rmtree_error)


def _log_rmtree_error(function: object, path: str, exc_info: object) -> None:
    log.warning("could not remove %s from a run's working directory", path)



def write_files(root: str, files: Mapping[str, bytes]) -> None:
    """Write a skill's files (relative paths, checked by the caller) under `root`, byte for byte."""
    os.makedirs(root, 0o755, exist_ok=True)
    real = os.path.realpath(root)
    for path, data in files.items():
        target = os.path.realpath(os.path.join(real, path))
        if not target.startswith(real + os.sep):
            raise ValueError(f"file path {path!r} leaves the working directory")
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data)
