"""Client ID Metadata Documents: the SDK's OAuth client signs in with an https URL as its client_id.

The documents come from an https server the test starts on loopback, with a self-signed certificate
made here (cryptography) and trusted by selfMCP through SSL_CERT_FILE.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import MemoryStorage, OwnerBrowser, PASSWORD, REDIRECT, pkce, register, run_server
from selfmcp.remote import cimd

pytestmark = pytest.mark.anyio


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfmcp test documents")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class DocumentServer:
    """https://127.0.0.1:<port>/: good, lying, oversized and slow client metadata documents."""

    def __init__(self, cert: Path, key: Path) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.sock, self.base = sock, f"https://127.0.0.1:{sock.getsockname()[1]}"
        self.fetches: dict[str, int] = {}
        app = Starlette(routes=[Route("/{name}.json", self.document)])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                    ssl_certfile=str(cert), ssl_keyfile=str(key)))

    def url(self, name: str) -> str:
        return f"{self.base}/{name}.json"

    async def document(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.fetches[name] = self.fetches.get(name, 0) + 1
        doc = {"client_id": self.url(name), "client_name": "CIMD Test Client", "redirect_uris": [REDIRECT],
               "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
               "token_endpoint_auth_method": "none"}
        if name == "other-id":
            doc["client_id"] = self.url("client")
        elif name == "big":
            doc["padding"] = "x" * 10_000
        elif name == "slow":
            await anyio.sleep(30)  # longer than selfMCP waits
        return JSONResponse(doc, headers={"Cache-Control": "max-age=600"})


@contextlib.contextmanager
def document_server(tmp_path: Path) -> Iterator[tuple[DocumentServer, Path]]:
    cert, key = make_certificate(tmp_path)
    docs = DocumentServer(cert, key)
    thread = threading.Thread(target=docs.server.run, kwargs={"sockets": [docs.sock]}, daemon=True)
    thread.start()
    try:
        while not docs.server.started:
            threading.Event().wait(0.02)
        yield docs, cert
    finally:
        docs.server.should_exit = True
        thread.join(10)


def authorize_params(client_id: str, redirect_uri: str = REDIRECT) -> dict[str, str]:
    return {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st",
            "code_challenge": pkce()[1], "code_challenge_method": "S256"}


async def test_the_sdk_client_signs_in_with_a_metadata_document_url_and_bad_documents_are_refused(tmp_path):
    with document_server(tmp_path) as (docs, cert), run_server(
            tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD, SELFMCP_CIMD_LOOPBACK="1",
            SSL_CERT_FILE=str(cert)) as running:
        async with httpx2.AsyncClient(timeout=30) as http:
            metadata = (await http.get(running.base + "/.well-known/oauth-authorization-server")).json()
            assert metadata["client_id_metadata_document_supported"] is True
            assert "none" in metadata["token_endpoint_auth_methods_supported"]
            assert "client_secret_post" in metadata["token_endpoint_auth_methods_supported"]
            assert metadata["registration_endpoint"] == running.base + "/register"
            assert (await register(http, running.base))["client_id"]  # dynamic registration still works

        storage, browser = MemoryStorage(), OwnerBrowser()
        provider = OAuthClientProvider(
            running.base + "/mcp",
            OAuthClientMetadata(client_name="CIMD Test Client", redirect_uris=[REDIRECT],
                                grant_types=["authorization_code", "refresh_token"]),
            storage, redirect_handler=browser.open, callback_handler=browser.callback,
            client_metadata_url=docs.url("client"))
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
            async with Client(streamable_http_client(running.base + "/mcp", http_client=http), mode="legacy") as client:
                listing = await client.call_tool("skill_list_summary", {})
                assert not listing.is_error
        assert storage.client_info.client_id == docs.url("client")
        assert "CIMD Test Client" in browser.consent_text and "127.0.0.1:" in browser.consent_text
        assert docs.fetches["client"] == 1  # cached as its Cache-Control says

        async with httpx2.AsyncClient(timeout=30) as http:
            for name, reason in [("other-id", "differs"), ("big", "larger"), ("slow", "did not arrive")]:
                refused = await http.get(running.base + "/authorize", params=authorize_params(docs.url(name)))
                assert refused.status_code == 400, refused.text
                assert refused.json()["error"] == "invalid_client" and reason in refused.json()["error_description"]
            unlisted = await http.get(running.base + "/authorize",
                                      params=authorize_params(docs.url("client"), "http://127.0.0.1:2/elsewhere"))
            assert unlisted.status_code == 400 and unlisted.json()["error"] == "invalid_request"
            assert "redirect" in unlisted.json()["error_description"].lower()


async def test_a_document_on_a_private_address_is_refused_without_the_test_setting(tmp_path):
    with document_server(tmp_path) as (docs, cert), run_server(
            tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD, SSL_CERT_FILE=str(cert)) as running:
        async with httpx2.AsyncClient(timeout=30) as http:
            refused = await http.get(running.base + "/authorize", params=authorize_params(docs.url("client")))
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"
        assert "not a public address" in refused.json()["error_description"]
        assert docs.fetches == {}


@pytest.mark.parametrize(("header", "seconds"), [
    (None, cimd.DEFAULT_CACHE_S), ("max-age=600", 600), ("public, max-age=99999999", cimd.MAX_CACHE_S),
    ("no-store", 0), ("no-cache, max-age=600", 0), ("private", cimd.DEFAULT_CACHE_S)])
def test_a_document_is_kept_as_its_cache_control_says(header, seconds):
    assert cimd._cache_seconds(header) == seconds


@pytest.mark.parametrize(("document", "reason"), [
    (b"[]", "not a JSON object"), (b"{", "not JSON"),
    (json.dumps({"client_id": "https://c.example/c.json", "redirect_uris": []}).encode(), "no redirect_uris"),
    (json.dumps({"client_id": "https://c.example/c.json", "redirect_uris": [REDIRECT],
                 "token_endpoint_auth_method": "client_secret_basic"}).encode(), "not supported"),
])
def test_unusable_documents_say_why(document, reason):
    with pytest.raises(cimd.CIMDError, match=reason):
        cimd.ClientMetadataResolver._parse("https://c.example/c.json", document)
