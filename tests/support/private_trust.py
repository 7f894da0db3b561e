"""A test certificate authority that only one process tree trusts.

Some clients cannot be told which CA to trust: the Run:ai streamer's C++ Azure client always
speaks https to ACCOUNT.SUFFIX and sets curl's CA file itself to Debian's system bundle
(``/etc/ssl/certs/ca-certificates.crt``; SSL_CERT_FILE and CURL_CA_BUNDLE do not reach it). To
test it against a server on loopback, the test makes its own CA, signs the server's certificate
with it, and runs the client in a private mount namespace (``unshare --mount``, propagation
private) where each trust file is bind-mounted over by a copy of itself plus the test CA, and
``/etc/hosts`` by a copy naming the test host names. The machine's own files never change: the
mounts exist only in that namespace and vanish with its last process.

Needs root (tests run as root here and under CI) and util-linux's ``unshare`` and ``mount``
(scripts/test-deps.sh); where they are missing the test skips, except under CI, where it fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.ci import missing, need_module

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's; the streamer's curl reads this one
HOSTS = Path("/etc/hosts")

# Runs inside the new namespace: bind each (source, target) pair given after the script, then
# exec the command after "--". Arguments are paths and the command; no secret is ever among them.
_BIND_THEN_EXEC = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'


@dataclass(frozen=True)
class LoopbackCA:
    ca: Path  # the CA certificate (PEM)
    cert: Path  # the server's certificate, signed by the CA, for ``hosts`` and 127.0.0.1
    key: Path  # the server's private key (PEM, mode 0600)
    hosts: tuple[str, ...]


def make_test_ca(folder: Path, hosts: tuple[str, ...]) -> LoopbackCA:
    """A fresh CA (valid for two hours) and a server certificate for ``hosts`` signed by it."""
    need_module("cryptography", "cryptography is not installed (the test extra has it)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=2)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kaito-runtime test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    found = LoopbackCA(folder / "test-ca.pem", folder / "server.pem", folder / "server-key.pem", hosts)
    found.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(found.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return found


def trust_files() -> list[Path]:
    """The CA files the clients of a launcher read: the system bundle (curl in the streamer's C++
    clients) and certifi's (requests, under azure-storage-blob in the planner and in vLLM)."""
    import certifi

    return [SYSTEM_BUNDLE, Path(certifi.where()).resolve()]


def trusting_prefix(ca: LoopbackCA, folder: Path) -> list[str]:
    """An argv prefix that runs a command in a private mount namespace where ``ca`` is trusted by
    every file of trust_files() and ``ca.hosts`` resolve to 127.0.0.1."""
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if unshare is None or mount is None:
        missing("util-linux's unshare and mount are needed to trust a test CA in a private mount namespace "
                "(scripts/test-deps.sh installs them)")
    if os.geteuid() != 0:
        missing("a private mount namespace with bind mounts needs root (tests run as root under CI)")
    if not SYSTEM_BUNDLE.is_file():
        missing(f"{SYSTEM_BUNDLE} is missing (Debian's ca-certificates package)")
    folder.mkdir(parents=True, exist_ok=True)
    binds: list[str] = []
    for n, target in enumerate(trust_files()):
        copy = folder / f"trust-{n}-{target.name}"
        copy.write_bytes(target.read_bytes().rstrip(b"\n") + b"\n" + ca.ca.read_bytes())
        binds += [str(copy), str(target)]
    hosts = folder / "hosts"
    hosts.write_text(HOSTS.read_text() + "".join(f"127.0.0.1 {h}\n" for h in ca.hosts))
    binds += [str(hosts), str(HOSTS)]
    return [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _BIND_THEN_EXEC, "sh", *binds, "--"]


def check_the_namespace_is_private(ca: LoopbackCA, folder: Path) -> None:
    """Fail unless the bind mounts are seen inside the namespace and not outside it."""
    inside = subprocess.run([*trusting_prefix(ca, folder), "cat", str(SYSTEM_BUNDLE)], capture_output=True,
                            timeout=60)
    assert inside.returncode == 0, inside.stderr.decode(errors="replace")
    assert ca.ca.read_bytes() in inside.stdout, "the test CA is not in the namespace's system bundle"
    assert ca.ca.read_bytes() not in SYSTEM_BUNDLE.read_bytes(), "the test CA leaked into the machine's trust store"
