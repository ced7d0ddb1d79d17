"""Start the real server.py as a subprocess for the remote-mode tests, and talk OAuth to it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:1/callback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any SELFMCP_* or Replit variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFMCP_", "REPLIT_", "PORT"))}
    env.update(extra)
    return env


class Server:
    """server.py on a free port; `restart()` keeps the port and the database."""

    def __init__(self, tmp_path: Path, env: dict[str, str], cmd: list[str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.port = int(env.get("SELFMCP_PORT") or env.get("PORT") or free_port())
        self.env = {"SELFMCP_DB_PATH": str(tmp_path / "remote.db"), **env}
        if "PORT" not in env:
            self.env["SELFMCP_PORT"] = str(self.port)
        self.cmd = cmd or [sys.executable, "server.py"]
        self.base = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return Path(self.env["SELFMCP_DB_PATH"])

    @property
    def log_text(self) -> str:
        """Everything every run of the server wrote to stdout and stderr."""
        return "".join(p.read_text() for p in self.logs)

    def start(self) -> None:
        log_path = self.tmp_path / f"server-{self.port}-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=clean_env(**self.env), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start:\n{self.log_text}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running(tmp_path: Path, cmd: list[str] | None = None, **env: str) -> Iterator[Server]:
    """A started Server with `env` (SELFMCP_HOST defaults to 127.0.0.1); stopped on exit."""
    env.setdefault("SELFMCP_TRANSPORT", "streamable-http")
    if "PORT" not in env:
        env.setdefault("SELFMCP_HOST", "127.0.0.1")
    server = Server(tmp_path, env, cmd)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ OAuth client helpers

def form_fields(page: httpx2.Response) -> dict[str, str]:
    assert page.status_code == 200, page.text
    return dict(re.findall(r'name="(request|csrf)" value="([^"]+)"', page.text))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def register(http: httpx2.AsyncClient, base: str, **metadata: Any) -> dict[str, Any]:
    body = {"client_name": "Test client", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], **metadata}
    response = await http.post(base + "/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def mcp_post(base: str, access_token: str) -> httpx2.Response:
    """An initialize request to /mcp with `access_token` as the bearer token."""
    async with httpx2.AsyncClient() as http:
        return await http.post(base + "/mcp", headers={
            "Authorization": f"Bearer {access_token}", "Accept": "application/json, text/event-stream"}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
