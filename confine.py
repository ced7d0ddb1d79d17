"""Operating-system confinement for skill runs and dependency installs; imports no project module.

executor.py combines these pieces into the sandbox a run gets:

- `make_not_dumpable()`: the server marks itself non-dumpable, so no process of another
  uid, or of its own uid without CAP_SYS_PTRACE, can read /proc/<server>/environ, /fd or /mem.
- `RunUids`: when the server runs as root, each concurrency slot runs as its own
  unprivileged uid (and installs as another), so kernel permissions keep runs away from
  /etc/shadow, root-owned files and each other, and every process of a run can be found by uid.
- `CgroupSlots`: one cgroup per slot (v2, or the v1 memory and pids hierarchies), bounding the
  TOTAL memory and the number of processes of a run, and listing every process it started.
- `Landlock`: where neither bubblewrap nor another uid is available (an unprivileged
  container such as Replit), a Landlock ruleset built once in the server and applied by the
  child before any code it did not get from the server runs: everything readable except the
  hidden paths (database, server code, /etc/shadow), writable only its working directory and
  /dev, no signals to or ptrace of processes outside the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import sys
import logging
import os
import pwd
import signal
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("selfmcp.confine")

_PR_SET_DUMPABLE = 4
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_RULE_NET_PORT = 2
# Access rights, by the ABI version that introduced them.
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
# Readable by nobody in a run, wherever the server's own files are.
ALWAYS_HIDDEN = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
                 "/etc/sudoers.d", "/root")
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

    def kill(self, slot: int, deadline_s: float = 2.0) -> int:
        """SIGKILL every process in the slot until it is empty; return how many were signalled."""
        signalled = 0
        end = time.monotonic() + deadline_s
        while (pids := self.members(slot)) and time.monotonic() < end:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    signalled += 1
            time.sleep(0.001)
        return signalled

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


# ---------------------------------------------------------------------------- Landlock

class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none)."""
    try:
        version = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def landlock_ruleset(*, hidden: Iterable[str], read: Sequence[str] = (), write: Sequence[str] = (),
                     network: bool = True) -> int:
    """A Landlock ruleset fd: everything readable but `hidden` (unless under `read`), `write` writable.

    Raises OSError when the kernel has no Landlock. The fd is inheritable; a child applies it
    with `LANDLOCK_PRELUDE`.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (
        _FS_IOCTL_DEV if abi >= 5 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 and not network else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    libc = _libc()
    fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in _complement(hidden):
            _allow(libc, fd, path, _READ | (fs & _FS_IOCTL_DEV))
        for path in read:
            _allow(libc, fd, path, _READ)
        for path in write:
            _allow(libc, fd, path, fs)
        _allow(libc, fd, "/dev", _READ | _FS_WRITE_FILE | (fs & (_FS_TRUNCATE | _FS_IOCTL_DEV)))
    except BaseException:
        os.close(fd)
        raise
    os.set_inheritable(fd, True)
    return fd


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
        rule = _PathBeneath(access, target)
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path!r}")
    finally:
        os.close(target)


def _complement(hidden: Iterable[str]) -> list[str]:
    """Paths that together cover the whole file system except `hidden` (symlinks left out)."""
    hide = {os.path.realpath(h) for h in [*hidden, *ALWAYS_HIDDEN]}
    if "/" in hide:
        return []
    ancestors = {"/"}
    for path in hide:
        while path != "/":
            path = os.path.dirname(path)
            ancestors.add(path)
    out = []
    for parent in sorted(ancestors):
        try:
            entries = os.listdir(parent)
        except OSError:
            continue
        for entry in entries:
            full = os.path.join(parent, entry)
            if full in hide or full in ancestors or os.path.islink(full):
                continue
            out.append(full)
    return out


# Applied in the child, first: no new privileges, the ruleset, then (as root) no capabilities.
LANDLOCK_PRELUDE = """\
import ctypes as _ct, os as _os
_l = _ct.CDLL(None, use_errno=True)
if _l.prctl(38, 1, 0, 0, 0) or _l.syscall(446, {fd}, 0):
    raise SystemExit("selfmcp: could not enter the Landlock sandbox")
_os.close({fd})
if _os.geteuid() == 0:
    for _i in range(64):
        _l.prctl(24, _i, 0, 0, 0)
    _l.capset((_ct.c_uint32 * 2)(0x20080522, 0), (_ct.c_uint32 * 6)())
del _ct, _os, _l
"""


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
    abi = landlock_abi()
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
    cmd = [sandbox.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
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
