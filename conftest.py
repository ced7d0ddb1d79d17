"""Shared test fixtures and helpers: any test file runs alone (`pytest tests/test_remote.py`).

- `FakeEmbedder` / `BrokenEmbedder`: deterministic embedders (as llm's EmbedDemo), no model files.
- fixtures `anyio_backend`, `db_path`, `reg` (a seeded Registry on a temporary database).
- `assert_error(result, code)`: a tool result carries the one error shape with that code.
- `free_port()`, `clean_env()`, `Server` / `run_server()` (server.py as a subprocess on HTTP; HTTP asks
  for credentials on every bind, so a test says SELFMCP_AUTH=none when it wants none),
  `http_server()` (the same, yielding its base URL: no auth, or `token=` for the static token),
  `http_client()` (an MCP Client for it, with the token), `stdio_params()` (server.py over stdio).
- OAuth client helpers: `register`, `pkce`, `form_fields`, `mcp_post`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
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
from urllib.parse import parse_qs, urlsplit

import httpx2
import numpy as np
import pytest
from mcp import StdioServerParameters
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthToken

import skills
from embeddings import normalise

ROOT = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------ embedders

class FakeEmbedder:
    """Deterministic bag-of-words embedder: each word hashed to one of `dim` axes."""

    def __init__(self, dim: int = 32, model_id: str = "fake-32") -> None:
        self.dim, self.model_id, self.calls = dim, model_id, 0

    def embed(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in skills.split_words(text):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return normalise(out)


class BrokenEmbedder:
    """A remote model that fails while `broken` is true."""

    model_id = "remote-model"

    def __init__(self) -> None:
        self.broken = True
        self.inner = FakeEmbedder(24, "remote-model")

    def embed(self, texts):
        if self.broken:
            raise ConnectionError("remote down")
        return self.inner.embed(texts)


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "skills.db"


@pytest.fixture
def reg(db_path):
    registry = skills.Registry(db_path, FakeEmbedder(), environ={"PATH": os.environ["PATH"]})
    registry.seed_core_skills()
    return registry


# ---------------------------------------------------------------------------- tool results

def payload(result) -> dict[str, Any]:
    assert result.structured_content is not None
    return result.structured_content


def assert_error(result, code: str) -> dict[str, Any]:
    """`result` is a tool error in the one error shape, with `code`; returns its payload."""
    assert result.is_error, result
    body = json.loads(result.content[0].text)
    assert body == result.structured_content
    assert body["error"] == code
    assert body["message"] and body["hint"]
    return body


# ------------------------------------------------------------------------ server processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any SELFMCP_* or Replit variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFMCP_", "REPLIT_", "PORT"))}
    env.update(extra)
    return env


def stdio_params(tmp_path, **extra: str) -> StdioServerParameters:
    """server.py over stdio on a database in `tmp_path`."""
    env = clean_env(SELFMCP_DB_PATH=str(tmp_path / "e2e.db"), SELFMCP_LOG_LEVEL="WARNING",
                    SELFMCP_TRANSPORT="stdio", **extra)
    return StdioServerParameters(command=sys.executable, args=[str(ROOT / "server.py")], cwd=str(ROOT), env=env)


PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:1/callback"


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
def run_server(tmp_path: Path, cmd: list[str] | None = None, **env: str) -> Iterator[Server]:
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


@contextlib.contextmanager
def http_server(tmp_path, *, token: str | None = None, **extra: str) -> Iterator[str]:
    """server.py on streamable HTTP at 127.0.0.1:<free port>; yields its base URL.

    With `token`, clients must send it (SELFMCP_AUTH=token); without, and without SELFMCP_AUTH or
    SELFMCP_AUTH_TOKEN in `extra`, the server is started with SELFMCP_AUTH=none explicitly.
    """
    if token is not None:
        extra.update(SELFMCP_AUTH="token", SELFMCP_AUTH_TOKEN=token)
    elif "SELFMCP_AUTH" not in extra and "SELFMCP_AUTH_TOKEN" not in extra:
        extra["SELFMCP_AUTH"] = "none"
    with run_server(tmp_path, SELFMCP_DB_PATH=str(tmp_path / "e2e.db"), SELFMCP_LOG_LEVEL="WARNING", **extra) as server:
        yield server.base


@contextlib.asynccontextmanager
async def http_client(base: str, token: str | None = None, mode: str = "auto") -> Any:
    """An MCP Client on `base`/mcp over streamable HTTP, sending `token` as the bearer token if given."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(base + "/mcp", http_client=http), mode=mode) as client:
            yield client


@contextlib.asynccontextmanager
async def connected_client(tmp_path, transport: str, mode: str = "auto") -> Any:
    """An MCP Client on a fresh server.py over `transport` ("stdio" or "http"), in protocol era `mode`."""
    from mcp import Client

    if transport == "stdio":
        async with Client(stdio_params(tmp_path), mode=mode) as client:
            yield client
    else:
        with http_server(tmp_path) as base:
            async with Client(base + "/mcp", mode=mode) as client:
                yield client


class MemoryStorage:
    """The SDK OAuth client's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class OwnerBrowser:
    """The owner's browser: opens the authorization URL, approves on the consent page, reports the redirect."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.password = password
        self.visits = 0
        self.location = ""
        self.consent_text = ""

    async def open(self, authorization_url: str) -> None:
        self.visits += 1
        async with httpx2.AsyncClient() as browser:
            to_consent = await browser.get(authorization_url)
            assert to_consent.status_code == 302, to_consent.text
            page = await browser.get(to_consent.headers["location"])
            self.consent_text = page.text
            approved = await browser.post(to_consent.headers["location"].split("?")[0],
                                          data={**form_fields(page), "password": self.password, "action": "allow"})
            assert approved.status_code == 302, approved.text
            self.location = approved.headers["location"]

    async def callback(self) -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(self.location).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0])
