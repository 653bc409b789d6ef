"""TLS in crossdock's own clients (issue 16): Client, AsyncClient, AsyncClientPool and ``crossdock cli`` take
redis-cli's ``--tls --cacert --cert --key --sni --insecure`` and talk to a crossdock server started with
``--tls-cert``/``--tls-key`` (and ``--tls-ca`` for client certificates), with certificates made by trustme."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AsyncClient, AsyncClientPool, Client, ClientConnectionError, ConnectFailedError, TlsOptions
from tests.support import ROOT, ServerProcess

trustme = pytest.importorskip("trustme")

PASSWORD = "tls-secret"

#: Seconds a CLI run may take before the test fails instead of hanging.
CLI_TIMEOUT = 30.0

#: A reply bigger than one TLS record (16 KiB) many times over: the client must read what OpenSSL already decrypted.
BIG_VALUE = b"x" * (1024 * 1024)


@dataclass(frozen=True)
class Certs:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls-clients")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    paths = Certs(*(str(directory / f"{name}.pem") for name in Certs.__dataclass_fields__))
    ca.cert_pem.write_to_path(paths.ca)
    server.cert_chain_pems[0].write_to_path(paths.cert)
    server.private_key_pem.write_to_path(paths.key)
    client.cert_chain_pems[0].write_to_path(paths.client_cert)
    client.private_key_pem.write_to_path(paths.client_key)
    return paths


@pytest.fixture(scope="module", params=["async", "threaded"])
def tls_server(request: pytest.FixtureRequest, certs: Certs) -> Iterator[ServerProcess]:
    process = ServerProcess(
        request.param, "inline", ["--tls-cert", certs.cert, "--tls-key", certs.key, "--requirepass", PASSWORD]
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[ServerProcess]:
    process = ServerProcess("async", "inline", ["--tls-cert", certs.cert, "--tls-key", certs.key, "--tls-ca", certs.ca])
    yield process
    process.stop()


def test_sync_client_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    tls = TlsOptions(cacert=certs.ca)
    with Client("127.0.0.1", tls_server.port, password=PASSWORD, tls=tls) as c:
        assert c.execute("PING") == "PONG"
        assert c.execute("SET", "tls:big", BIG_VALUE) == "OK"
        assert c.execute("GET", "tls:big") == BIG_VALUE
        with c.pipeline() as p:
            for i in range(1000):
                p.execute("ECHO", i)
        assert p.results == [str(i).encode() for i in range(1000)]


def test_sync_client_refuses_an_unknown_ca_unless_insecure(tls_server: ServerProcess) -> None:
    with pytest.raises(ConnectFailedError, match="certificate verify failed"):
        Client("127.0.0.1", tls_server.port, password=PASSWORD, tls=True)  # the system store lacks this CA
    with Client("127.0.0.1", tls_server.port, password=PASSWORD, tls=TlsOptions(insecure=True)) as c:
        assert c.execute("PING") == "PONG"


def test_sni_names_the_server_checked(tls_server: ServerProcess, certs: Certs) -> None:
    with Client("127.0.0.1", tls_server.port, password=PASSWORD, tls=TlsOptions(cacert=certs.ca, sni="localhost")) as c:
        assert c.execute("PING") == "PONG"
    with pytest.raises(ConnectFailedError, match="match"):
        Client("127.0.0.1", tls_server.port, tls=TlsOptions(cacert=certs.ca, sni="other.example"))


def test_missing_ca_file_is_a_connect_error(tls_server: ServerProcess, tmp_path: Path) -> None:
    with pytest.raises(ConnectFailedError, match="cannot load the TLS files"):
        Client("127.0.0.1", tls_server.port, tls=TlsOptions(cacert=str(tmp_path / "missing.pem")))


def test_client_certificate(mtls_server: ServerProcess, certs: Certs) -> None:
    with Client("127.0.0.1", mtls_server.port, tls=TlsOptions(certs.ca, certs.client_cert, certs.client_key)) as c:
        assert c.execute("PING") == "PONG"
    # TLS 1.3: the server's refusal of a client without a certificate arrives at the first read, so ask something.
    with (
        pytest.raises(ClientConnectionError),
        Client("127.0.0.1", mtls_server.port, tls=TlsOptions(cacert=certs.ca)) as c,
    ):
        c.execute("PING")


def test_async_client_and_pool_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    tls = TlsOptions(cacert=certs.ca)

    async def scenario() -> None:
        async with AsyncClient("127.0.0.1", tls_server.port, password=PASSWORD, tls=tls) as c:
            assert await c.execute("PING") == "PONG"
            assert await c.execute("ECHO", BIG_VALUE) == BIG_VALUE
        async with AsyncClientPool("127.0.0.1", tls_server.port, size=3, password=PASSWORD, tls=tls) as pool:
            replies = await asyncio.gather(*(pool.execute("ECHO", i) for i in range(30)))
            assert replies == [str(i).encode() for i in range(30)]
        with pytest.raises(ConnectFailedError):
            await AsyncClient("127.0.0.1", tls_server.port, tls=True).connect()

    asyncio.run(scenario())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_crossdock_cli_over_tls(tls_server: ServerProcess, certs: Certs) -> None:
    port = str(tls_server.port)
    result = _cli("-p", port, "--tls", "--cacert", certs.ca, "-a", PASSWORD, "PING")
    assert (result.returncode, result.stdout, result.stderr) == (0, "PONG\n", "")
    result = _cli("-p", port, "--tls", "--insecure", "--sni", "localhost", "-a", PASSWORD, "ECHO", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n")


def test_crossdock_cli_client_certificate(mtls_server: ServerProcess, certs: Certs) -> None:
    flags = ["--tls", "--cacert", certs.ca, "--cert", certs.client_cert, "--key", certs.client_key]
    result = _cli("-p", str(mtls_server.port), *flags, "PING")
    assert (result.returncode, result.stdout) == (0, "PONG\n")


def test_crossdock_cli_tls_flag_without_tls_is_one_line(certs: Certs) -> None:
    result = _cli("--cacert", certs.ca, "PING")
    assert result.returncode == 2
    assert result.stderr == "crossdock cli: --cacert needs --tls\n"
