"""Real object-store servers on loopback for the tests: moto (S3), azurite (Azure Blob) and
gcp-storage-emulator (GCS), each a child process whose request log the tests read, plus a server
that accepts connections and never answers (a store that hangs).

moto and the GCS emulator come with the `test` extra (pyproject); azurite from npm through
scripts/test-deps.sh into .cache/test-tools. Where a server is missing a test skips with the
reason, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from tests.support.ci import missing
from tests.support.ports import free_port
from tests.support.private_trust import LoopbackCA

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AZURITE = REPO / ".cache" / "test-tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development key (public, the same in every Azurite install).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY_ID, S3_SECRET = "AKIAKAITOTEST0000001", "kaitoTestSecret/0123456789abcdefghijABCD"


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s")


class Server:
    """A child-process server with its combined output in ``log``."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 scheme: str = "http") -> None:
        self.port, self.log = port, log
        self.url = f"{scheme}://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                         start_new_session=True)
        _wait_port(port, self.proc, log)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def mark(self) -> int:
        return len(self.lines())

    def lines_since(self, mark: int) -> list[str]:
        return self.lines()[mark:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def werkzeug_requests(lines: list[str]) -> list[tuple[str, str, int]]:
    """(method, path, status) of each request in a werkzeug log (moto, the GCS emulator)."""
    found = []
    for line in lines:
        m = re.search(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3})', _ANSI.sub("", line))
        if m:
            found.append((m.group(1), m.group(2), int(m.group(3))))
    return found


def start_moto(tmp: Path, env: dict[str, str] | None = None) -> Server:
    exe = BIN / "moto_server"
    if not exe.exists():
        missing("moto_server is not installed (pip install 'moto[server]'; the test extra has it)")
    port = free_port()
    return Server([str(exe), "-H", "127.0.0.1", "-p", str(port)], port, tmp / f"moto-{port}.log", env)


def s3_env(server: Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.url, "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_client(server: Server):
    import boto3

    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)


def upload_s3(server: Server, bucket: str, prefix: str, folder: Path, *, create: bool = True, skip: tuple[str, ...] = ()) -> None:
    client = s3_client(server)
    if create:
        client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in skip:
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}" if prefix else path.name)


def start_azurite(tmp: Path, tls: LoopbackCA | None = None) -> Server:
    """Azurite on 127.0.0.1; with ``tls``, over https with the certificate that CA signed (it then
    also answers production-style URLs, https://ACCOUNT.HOST:PORT/CONTAINER/BLOB)."""
    if shutil.which("node") is None or not AZURITE.exists():
        missing("azurite is not installed (run scripts/test-deps.sh: Node.js from Debian, azurite from npm)")
    port = free_port()
    https = ["--cert", str(tls.cert), "--key", str(tls.key)] if tls else []
    return Server(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--debug",
         str(tmp / f"azurite-{port}-debug.log"), "--skipApiVersionCheck", "--loose", *https],
        port, tmp / f"azurite-{port}.log", scheme="https" if tls else "http",
    )


def azurite_connection_string(server: Server, *, with_key: bool = True) -> str:
    scheme = server.url.partition(":")[0]
    parts = [f"DefaultEndpointsProtocol={scheme}", f"AccountName={AZURITE_ACCOUNT}",
             f"BlobEndpoint={server.url}/{AZURITE_ACCOUNT}"]
    if with_key:
        parts.insert(2, f"AccountKey={AZURITE_KEY}")
    return ";".join(parts) + ";"


def upload_azure(server: Server, container: str, prefix: str, folder: Path, tls: LoopbackCA | None = None) -> None:
    from azure.storage.blob import BlobServiceClient

    verify = {"connection_verify": str(tls.ca)} if tls else {}
    service = BlobServiceClient.from_connection_string(azurite_connection_string(server), **verify)
    client = service.get_container_client(container)
    client.create_container()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            client.upload_blob(f"{prefix}/{path.name}", path.read_bytes(), overwrite=True)


def azure_sas(server: Server, container: str) -> str:
    """A read+list SAS token for ``container``, signed with Azurite's account key (what KAITO's
    init container mints for the real account)."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),
    )


class AzuriteRequest(NamedTuple):
    method: str
    url: str
    range: str  # the Range header, "" when none
    agent: str  # the User-Agent: which client sent it


def azurite_requests(server: Server) -> list[AzuriteRequest]:
    """Each request in Azurite's debug log, in order."""
    debug = next(server.log.parent.glob(f"azurite-{server.port}-debug.log"), None)
    if debug is None:
        return []
    found = []
    for m in re.finditer(r'RequestMethod=(\w+) RequestURL=(\S+) RequestHeaders:(\{.*?\})', debug.read_text(errors="replace")):
        rng = re.search(r'"(?:x-ms-)?range":"([^"]+)"', m.group(3))
        agent = re.search(r'"user-agent":"([^"]*)"', m.group(3))
        found.append(AzuriteRequest(m.group(1), m.group(2), rng.group(1) if rng else "", agent.group(1) if agent else ""))
    return found


def start_gcs(tmp: Path) -> Server:
    exe = BIN / "gcp-storage-emulator"
    if not exe.exists():
        missing("gcp-storage-emulator is not installed (the test extra has it)")
    port = free_port()
    return Server([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"], port,
                  tmp / f"gcs-{port}.log")


def upload_gcs(server: Server, bucket: str, prefix: str, folder: Path) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="kaito-runtime", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": server.url})
    b = client.create_bucket(bucket)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            b.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


class SilentServer:
    """Accepts TCP connections and never answers: a store that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.held:
            c.close()
