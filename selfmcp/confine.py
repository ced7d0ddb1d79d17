"""Operating-system confinement for skill runs and dependency installs: the sandbox plugged into executor.

`Confinement` is what `executor.Runner` asks of a sandbox (how a run's first process
starts, how every process of a run is killed); `runner()` builds both from settings.
Its pieces:

- `Sandbox` / `resolve_sandbox()`: SELFMCP_SANDBOX settled to bubblewrap, Landlock
  (selfmcp/landlock.py) or none; `bwrap_mounts()` / `bwrap_workdir()` the bubblewrap argv.
- `make_not_dumpable()`: the server marks itself non-dumpable, so no process of another
  uid, or of its own uid without CAP_SYS_PTRACE, can read /proc/<server>/environ, /fd or /mem.
- `RunUids`: when the server runs as root, each concurrency slot runs as its own
  unprivileged uid (and installs as another), so kernel permissions keep runs away from
  /etc/shadow, root-owned files and each other, and every process of a run can be found by uid.
- `kill_run()`: every process of a run found (session, process group, or its token in the
  environment) and killed, until none is left.
- `CgroupSlots`: one cgroup per slot (v2, or the v1 memory and pids hierarchies), bounding the
  TOTAL memory and the number of processes of a run, and listing every process it started.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import executor
from selfmcp import landlock, warm

log = logging.getLogger("selfmcp.confine")

_PR_SET_DUMPABLE = 4
RUN_UID_BASE = 64000
SANDBOX_MODES = ("auto", "bwrap", "landlock", "none")
_MERGED_USR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def make_not_dumpable() -> bool:
    """Make this process non-dumpable (its /proc files unreadable to others); True when it worked."""
    try:
        return _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------- uids

class RunUids:
    """Unprivileged uids for runs when the server is root: `install` for installers, one per slot."""

    def __init__(self, base: int, slots: int) -> None:
        self.base = base
        self.slots = slots

    @property
    def install(self) -> int:
        return self.base

    def for_slot(self, slot: int) -> int:
        return self.base + 1 + slot

    @classmethod
    def probe(cls, slots: int, base: int = RUN_UID_BASE) -> RunUids | None:
        """The uids to use, or None when this process is not root or the uids are taken by accounts."""
        if os.geteuid() != 0:
            return None
        for uid in range(base, base + slots + 1):
            with contextlib.suppress(KeyError):
                pwd.getpwuid(uid)
                log.warning("uid %d is an account on this machine: skill runs keep the server's uid", uid)
                return None
        return cls(base, slots)


def processes_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                found.append(int(name))
        except OSError:
            continue
    return found


# ----------------------------------------------------------------------- run processes

# How long the kill loop may go on before giving up on a process that will not die.
_KILL_DEADLINE_S = 2.0

def _last_pid() -> int | None:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def find_run_processes(session: int, token: bytes, since_ticks: int, *,
                       pid_range: tuple[int, int] | None = None) -> list[int]:
    """Live processes that belong to a run: in its session or process group, or carrying its token.

    The token check reads /proc/<pid>/environ only of processes started since the run
    began. With `pid_range` only those pids are looked at (a cheap pass for a run that
    ended by itself; pids are handed out in increasing order).
    """
    me = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me or (pid_range is not None and not pid_range[0] <= pid <= pid_range[1]):
            continue
        stat = _read_proc(name, "stat")
        if stat is None:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) == session or int(fields[3]) == session:
            found.append(pid)
            continue
        if int(fields[19]) + 1 < since_ticks:
            continue
        environ = _read_proc(name, "environ")
        if environ is not None and token in environ:
            found.append(pid)
    return found


def _read_proc(pid: str, entry: str) -> bytes | None:
    """/proc/<pid>/<entry>, or None when the process is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/{entry}", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def kill_run(session: int, token: bytes, since_ticks: int, *, thorough: bool,
             deadline_s: float = _KILL_DEADLINE_S) -> int:
    """SIGKILL every process of a run until none is left; return how many were signalled.

    `thorough` looks at every process in /proc; otherwise only at the pids handed out
    since the run's first process (enough for a run that ended by itself). Synchronous
    on purpose: it must also complete when the caller is being cancelled.
    """
    signalled = 0
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
        pid_range = None
        if not thorough:
            last = _last_pid()
            if last == session:  # no process was started after the run's first: nothing can be left
                return signalled
            if last is not None and last > session:  # else the pid counter wrapped: look everywhere
                pid_range = (session, last)
        strays = find_run_processes(session, token, since_ticks, pid_range=pid_range)
        if not strays:
            return signalled
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                signalled += 1
        if time.monotonic() > end:
            log.warning("processes of a run survived SIGKILL for %.1f s: %s", deadline_s, strays[:20])
            return signalled
        time.sleep(0.001)


# ----------------------------------------------------------------------------- cgroups

class CgroupSlots:
    """One cgroup per concurrency slot with a total memory and process bound (v2 or v1)."""

    def __init__(self, version: int, slots: list[list[str]], memory_bytes: int, pids: int) -> None:
        self.version = version
        self.slots = slots  # per slot: its directories (one per v1 hierarchy, one in v2)
        self.memory_bytes = memory_bytes
        self.pids = pids

    @classmethod
    def create(cls, count: int, *, memory_bytes: int, pids: int, root: str = "/sys/fs/cgroup") -> CgroupSlots | None:
        """Slots under this process's own cgroup; None (and nothing left behind) when not allowed here."""
        name = f"selfmcp-{os.getpid()}"
        for version, parents in ((2, _v2_parent(root)), (1, _v1_parents(root))):
            if not parents:
                continue
            made: list[str] = []
            try:
                if version == 2:
                    _write(os.path.join(parents[0], "cgroup.subtree_control"), "+memory +pids")
                slots = []
                for i in range(count):
                    dirs = []
                    for parent in parents:
                        path = os.path.join(parent, name, f"slot{i}")
                        os.makedirs(path, exist_ok=True)
                        made.append(path)
                        dirs.append(path)
                    slots.append(dirs)
                group = cls(version, slots, memory_bytes, pids)
                if version == 2:
                    for (path,) in slots:
                        _write(os.path.join(path, "cgroup.subtree_control"), "")  # fails if not a v2 cgroup
                        if memory_bytes:
                            _write(os.path.join(path, "memory.max"), str(memory_bytes))
                            with contextlib.suppress(OSError):
                                _write(os.path.join(path, "memory.swap.max"), "0")
                        _write(os.path.join(path, "pids.max"), str(pids))
                else:
                    for mem, pid in slots:
                        if memory_bytes:
                            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
                            with contextlib.suppress(OSError):
                                _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                        _write(os.path.join(pid, "pids.max"), str(pids))
                return group
            except OSError as exc:
                log.debug("cgroup v%d slots not usable here: %s", version, exc)
                for path in reversed(made):
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
                for parent in parents:
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(parent, name))
        return None

    def members(self, slot: int) -> list[int]:
        pids: set[int] = set()
        for path in self.slots[slot]:
            with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs"), encoding="ascii") as fh:
                pids.update(int(line) for line in fh if line.strip())
        return sorted(pids)

    def kill(self, slot: int, deadline_s: float = 2.0, *, wait: bool = True) -> int:
        """SIGKILL every process in the slot until it is empty; return how many were signalled.

        Without `wait`, it stops once every process left has been signalled (they are dying):
        it only goes on while new ones appear (a process that forks as it is killed).
        """
        signalled: set[int] = set()
        end = time.monotonic() + deadline_s
        while (pids := self.members(slot)) and time.monotonic() < end:
            fresh = [pid for pid in pids if pid not in signalled]
            if not wait and not fresh:
                break
            for pid in pids if wait else fresh:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    signalled.add(pid)
            if wait:
                time.sleep(0.001)
        return len(signalled)

    def close(self) -> None:
        """Remove the slots (each must be empty)."""
        parents = set()
        for dirs in self.slots:
            for path in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                parents.add(os.path.dirname(path))
        for parent in parents:
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def describe(self) -> str:
        mem = f"{self.memory_bytes >> 20} MiB" if self.memory_bytes else "no memory bound"
        return f"cgroup v{self.version}: {mem} and {self.pids} processes in total per run"


def _own_cgroup(line_filter: str) -> str | None:
    with contextlib.suppress(OSError), open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == line_filter or line_filter in controllers.split(","):
                return path
    return None


def _v2_parent(root: str) -> list[str]:
    if not os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return []
    own = _own_cgroup("")
    return [os.path.join(root, own.lstrip("/"))] if own is not None else []


def _v1_parents(root: str) -> list[str]:
    parents = []
    for controller in ("memory", "pids"):
        own = _own_cgroup(controller)
        base = os.path.join(root, controller)
        if own is None or not os.path.isdir(base):
            return []
        parents.append(os.path.join(base, own.lstrip("/")))
    return parents


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


@dataclass(frozen=True)
class Sandbox:
    """How runs are isolated: `mode` is "bwrap", "landlock" or "none" (never "auto": see `resolve_sandbox`)."""

    mode: str = "none"
    network: bool = True
    bwrap: str | None = None
    hidden: tuple[str, ...] = ()
    # Why "auto" did not settle on bubblewrap (for the start-up warning); empty otherwise.
    note: str = ""
    setpriv: str | None = None  # under bubblewrap as root: switches to the slot's uid
    explicit: bool = False  # the owner asked for this mode (rather than "auto" falling back)


# --------------------------------------------------------------------------- sandbox


def probe_bwrap(bwrap: str, *, network: bool = True) -> str | None:
    """Try a minimal bubblewrap sandbox; None when it works, else why it does not."""
    true = shutil.which("true") or "/bin/true"
    cmd = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
           "--die-with-parent", "--cap-drop", "ALL"]
    if not network:
        cmd.append("--unshare-net")
    try:
        done = subprocess.run([*cmd, true], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not be run: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{bwrap} failed ({err[-1] if err else f'exit {done.returncode}'})"
    return None


def resolve_sandbox(requested: str, *, network: bool = True, hidden: Iterable[str | os.PathLike[str]] = (),
                    bwrap: str | None = None) -> Sandbox:
    """Turn SELFMCP_SANDBOX's value into a `Sandbox`; raises RuntimeError when an explicit mode cannot work.

    "auto" takes bubblewrap when it works, else Landlock when the kernel has it, else none
    (with `note` saying why).
    """
    if requested not in SANDBOX_MODES:
        raise ValueError(f"Unknown sandbox mode {requested!r}; use one of {', '.join(SANDBOX_MODES)}.")
    hide = tuple(sorted({os.path.realpath(p) for p in hidden}))
    explicit = requested != "auto"
    if requested == "none":
        return Sandbox("none", network=network, hidden=hide, explicit=True)
    problem = ""
    if requested in ("auto", "bwrap"):
        path = bwrap or shutil.which("bwrap")
        problem = "bubblewrap (bwrap) is not installed" if path is None else (probe_bwrap(path, network=network) or "")
        if not problem:
            setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
            return Sandbox("bwrap", network=network, bwrap=path, hidden=hide, setpriv=setpriv, explicit=explicit)
        if requested == "bwrap":
            raise RuntimeError(f"SELFMCP_SANDBOX=bwrap but {problem}.")
    abi = landlock.landlock_abi()
    if abi >= 1:
        return Sandbox("landlock", network=network, hidden=hide, note=problem, explicit=explicit)
    if requested == "landlock":
        raise RuntimeError("SELFMCP_SANDBOX=landlock but this kernel has no Landlock.")
    return Sandbox("none", network=network, hidden=hide, note=f"{problem} and this kernel has no Landlock")


def python_roots(python: str) -> list[str]:
    """Directories an interpreter needs to start: its prefix, and its venv's base prefix."""
    roots: list[str] = []
    exe = os.path.abspath(python)
    venv = os.path.dirname(os.path.dirname(exe))
    cfg = os.path.join(venv, "pyvenv.cfg")
    if os.path.isfile(cfg):
        roots.append(venv)
        with open(cfg, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    roots.append(os.path.dirname(os.path.realpath(value.strip())))
    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(exe))))
    if os.path.realpath(exe) == os.path.realpath(sys.executable):
        roots += [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    return roots


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def bwrap_workdir(workdir: str, size_mb: int) -> list[str]:
    """The working directory as a bounded tmpfs, with the server's files in its read-only `.in`."""
    inputs = os.path.join(workdir, ".in")
    size = ["--size", str(size_mb << 20)] if size_mb > 0 else []
    return [*_open_parents([workdir]), "--perms", "1777", *size, "--tmpfs", workdir, "--ro-bind", inputs, inputs, "--chdir", workdir,
            "--remount-ro", "/"]


def _open_parents(paths: Iterable[str], skip: Sequence[str] = ()) -> list[str]:
    parents: set[str] = set()
    for path in paths:
        while (path := os.path.dirname(path)) != "/":
            if not any(_is_within(path, s) for s in skip):
                parents.add(path)
    cmd: list[str] = []
    for parent in sorted(parents, key=len):
        cmd += ["--perms", "0755", "--dir", parent]
    return cmd


def setpriv_argv(setpriv: str, uid: int) -> list[str]:
    """Become `uid` (its own gid, no groups, no capabilities, no new privileges) before the skill starts."""
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--inh-caps=-all",
            "--bounding-set=-all", "--"]


def bwrap_mounts(sandbox: Sandbox, *, python: str, read_only: Sequence[str] = ()) -> list[str]:
    """The part of the bwrap command that does not depend on the run's working directory."""
    assert sandbox.bwrap is not None
    # (No UTS namespace: without capabilities a run cannot change the host name anyway; it costs ~0.5 ms a run.)
    cmd = [sandbox.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try",
           "--die-with-parent", "--cap-drop", "ALL"]
    if sandbox.setpriv:  # only to switch to the run's uid; setpriv drops them all
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    if not sandbox.network:
        cmd.append("--unshare-net")
    system = ["/usr", "/etc"]
    for top in _MERGED_USR_DIRS:
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            system.append(top)
    resolv = os.path.realpath("/etc/resolv.conf")
    if not _is_within(resolv, "/etc") and os.path.exists(resolv):
        system.append(resolv)  # e.g. systemd-resolved's file under /run
    for path in system:
        cmd += ["--ro-bind", path, path]
    # Hide what must stay invisible where it lies inside something bound above.
    for path in sandbox.hidden:
        # (Never a parent of a system directory: hiding /usr would hide the interpreter.)
        if any(_is_within(path, s) for s in system) and not any(_is_within(s, path) for s in system):
            cmd += ["--tmpfs", path, "--remount-ro", path]
    # Each path at its real location and, when a symlink leads there, where the argv names it.
    binds: dict[str, str] = {}
    for path in [*python_roots(python), *read_only]:
        if not path or not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        for dest in {real, os.path.abspath(path)}:
            if not any(_is_within(dest, s) for s in system):
                binds[dest] = real
    # Directories bubblewrap creates on the way to a bind are 0700: open them to the run's uid.
    cmd += _open_parents([*binds, *sandbox.hidden], skip=system)
    # Parents before children, so a nested bind lands on top of its parent's.
    for dest in sorted(binds, key=len):
        cmd += ["--ro-bind", binds[dest], dest]
    # A bounded, read-only /dev (but /dev/shm), a read-only /proc/sys, no password hashes.
    cmd += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev",
            "--perms", "1777", "--size", str(16 << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    for secret in ("/etc/shadow", "/etc/gshadow"):
        if os.path.exists(secret):
            cmd += ["--ro-bind", "/dev/null", secret]
    return cmd


# ------------------------------------------------------------------------ confinement

# The run's first process joins its slot's cgroups ("0" moves the writer) and then becomes the
# run, so every process the run starts is born inside them: no race, no /proc scan.
_JOIN_CGROUPS = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"'
# Under Landlock the interpreter starts with -S: site-packages (and their .pth files) load after the ruleset.
_SITE = "import site as _site\n_site.main()\ndel _site\n"
_ISOLATION = {
    "bwrap": "bubblewrap: own PID namespace, read-only system view, database and server directory hidden, "
             "read-only /dev and /proc/sys, /etc/shadow masked, no capabilities",
    "landlock": "Landlock (no bubblewrap): database and server directory unreadable, writes only in the "
                "run's directory, no signals to the server; same PID namespace",
    "none": "NONE: skills can read everything this server's user can, including the database",
}


class Confinement:
    """A sandbox as `executor.Runner` uses it (see `executor.Unconfined` for the interface)."""

    def __init__(self, sandbox: Sandbox, limits: executor.Limits, concurrency: int, tmp_root: str) -> None:
        self.sandbox = sandbox
        self.mode = sandbox.mode
        self.workdir_at_start = sandbox.mode == "bwrap"  # its tmpfs is mounted when the sandbox starts
        self.private_pids = sandbox.mode == "bwrap"  # a PID namespace per run
        self.limits = limits
        self.concurrency = concurrency
        self.tmp_root = tmp_root  # under Landlock runs may write only below it
        self.uids = RunUids.probe(concurrency) if sandbox.mode == "bwrap" and sandbox.setpriv else None
        self.cgroups = CgroupSlots.create(concurrency, memory_bytes=limits.memory_mb << 20,
                                          pids=limits.processes or 1 << 22)
        if self.cgroups is not None:
            atexit.register(self.cgroups.close)
        # Per interpreter and extra paths: the answers only change when files are replaced.
        self._mounts: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._rulesets: dict[tuple[str, tuple[str, ...]], int] = {}

    def command(self, first: str, *, python: str, read_only: Sequence[str], workdir: str | None, slot: int,
                env: dict[str, str]) -> tuple[list[str], list[int]]:
        """The argv (and inherited fds) that start a run's first process, running `first`, in this sandbox."""
        argv, pass_fds = [python, "-c", first], []
        key = (python, tuple(read_only))
        if self.mode == "landlock":
            fd = self._rulesets.get(key)
            if fd is None:
                fd = self._rulesets[key] = landlock.landlock_ruleset(
                    hidden=self.sandbox.hidden, read=[*python_roots(python), *read_only], write=[self.tmp_root],
                    network=self.sandbox.network)
            pass_fds.append(fd)
            argv = [python, "-S", "-c", landlock.LANDLOCK_PRELUDE.format(fd=fd) + _SITE + first]
        elif self.mode == "bwrap":
            assert workdir is not None
            env["HOME"] = workdir  # the real home is not visible (or writable) in the sandbox
            mounts = self._mounts.get(key)
            if mounts is None:
                mounts = self._mounts[key] = bwrap_mounts(self.sandbox, python=python, read_only=read_only)
            uid = self.uids.for_slot(slot) if self.uids is not None else None
            drop = setpriv_argv(self.sandbox.setpriv, uid) if self.sandbox.setpriv and uid is not None else []
            argv = [*mounts, *bwrap_workdir(workdir, self.limits.workdir_mb), *drop, *argv]
        if self.cgroups is not None:
            dirs = self.cgroups.slots[slot]
            argv = ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", str(len(dirs)), *dirs, *argv]
        return argv, pass_fds

    def own_uid(self, slot: int) -> bool:
        return self.uids is not None

    def kill(self, session: int, token: bytes, since_ticks: int, slot: int, *, thorough: bool) -> None:
        """Every process of the run, wherever it went: by session, token, slot cgroup or slot uid.

        With a cgroup per slot a run that ended by itself needs no /proc scan: every process it
        started is in its slot's cgroup, which it cannot leave.
        """
        if self.cgroups is not None and not thorough:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, signal.SIGKILL)
        else:
            kill_run(session, token, since_ticks, thorough=thorough)
        if self.cgroups is not None:
            self.cgroups.kill(slot, wait=thorough)
        elif self.uids is not None and thorough:
            for pid in processes_of_uid(self.uids.for_slot(slot)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def in_force(self) -> dict[str, str]:
        """Which protections and limits runs get, in words (start-up log, selfmcp_about)."""
        lim, uids = self.limits, self.uids
        uid = (f"each run as its own unprivileged uid ({uids.for_slot(0)}-{uids.for_slot(self.concurrency - 1)})"
               if uids else ("the server's uid (root, without capabilities)" if os.geteuid() == 0
                             else "the server's uid"))
        if self.cgroups is not None:
            totals = self.cgroups.describe()
        elif uids is not None:
            totals = (f"{lim.processes} processes per run (RLIMIT_NPROC of the run's uid); memory only per "
                      f"process ({lim.memory_mb} MiB each): no cgroup here")
        else:
            totals = (f"memory only per process ({lim.memory_mb} MiB each) and no total process bound: no "
                      "cgroup here")
        disk = (f"working directory a {lim.workdir_mb} MiB tmpfs" if self.mode == "bwrap"
                else f"working directory on disk, files up to {lim.file_size_mb} MiB each, no total bound")
        return {"isolation": _ISOLATION[self.mode], "uid": uid, "totals": totals, "disk": disk}


def runner(sandbox: Sandbox | None = None, *, limits: executor.Limits | None = None, concurrency: int = 4,
           prestart: bool = True, tmp_root: str | None = None) -> executor.Runner:
    """A runner confined by `sandbox` (default: none); with `prestart`, one that starts sandboxes ahead."""
    limits = limits or executor.Limits()
    run = (warm.WarmRunner if prestart else executor.Runner)(limits=limits, concurrency=concurrency,
                                                           tmp_root=tmp_root)
    # Landlock lets runs write only under the runner's own directory: known once the runner exists.
    run.confinement = Confinement(sandbox or Sandbox(), limits, concurrency, run.tmp_root)
    return run
