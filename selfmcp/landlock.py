"""Landlock for skill runs and installs where bubblewrap cannot run (an unprivileged container).

A ruleset is built once in the server (`landlock_ruleset`) and applied by the child with
`LANDLOCK_PRELUDE` before any code it did not get from the server runs: everything readable
except the hidden paths (database, server code, /etc/shadow), writable only its working
directory and /dev, no signals to or ptrace of processes outside the run, and (ABI 4+) no TCP
when the sandbox has no network. Imports no project module.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable, Sequence

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


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


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


