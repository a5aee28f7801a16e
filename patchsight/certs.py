"""A throwaway certificate authority for the local Kafka broker and Redis server.

``patchsight infra up`` (or ``patchsight infra certs``) creates it under the state
folder the first time a TLS listener is asked for. Clients trust ``ca.pem``
(``kafka.security.ssl_cafile``, ``redis.ssl_cafile``); the server certificate names
``localhost``, ``127.0.0.1`` and ``::1``, so host name checks stay on. Private keys
are readable by their owner only. This is for development machines: a production
cluster brings certificates from its own CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = 825  # the longest validity TLS clients accept for a server certificate
SERVER_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"


class CertificateError(RuntimeError):
    """openssl is missing or failed; the message says which step."""


@dataclass(frozen=True)
class LocalTLS:
    """Where the local CA and the server certificate live."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        """What clients trust."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_keystore(self) -> Path:
        """Key and certificate chain in one file: Kafka's ``ssl.keystore.type=PEM``."""
        return self.directory / "server-keystore.pem"

    def complete(self) -> bool:
        files = (self.ca_file, self.ca_key, self.server_cert, self.server_key, self.server_keystore)
        return all(f.exists() for f in files)


def _openssl(step: str, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("openssl is not installed; local TLS needs it (`apt-get install openssl`).")
    proc = subprocess.run([openssl, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CertificateError(f"openssl failed to {step}:\n{proc.stderr.strip()[-1500:]}")


def _make_ca(tls: LocalTLS) -> None:
    _openssl(
        "create the local CA",
        "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(tls.ca_key), "-out", str(tls.ca_file), "-days", str(VALID_DAYS),
        "-subj", "/CN=patchsight local development CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )


def _make_server_cert(tls: LocalTLS) -> None:
    csr = tls.directory / "server.csr"
    extensions = tls.directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={SERVER_NAMES}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    # -nodes writes an unencrypted PKCS#8 key: what Kafka's PEM keystore reads without ssl.key.password
    _openssl(
        "create the server key",
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tls.server_key),
        "-out", str(csr), "-subj", "/CN=localhost",
    )
    _openssl(
        "sign the server certificate",
        "x509", "-req", "-sha256", "-in", str(csr), "-CA", str(tls.ca_file), "-CAkey", str(tls.ca_key),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(VALID_DAYS),
        "-extfile", str(extensions), "-out", str(tls.server_cert),
    )
    csr.unlink()
    extensions.unlink()
    keystore = tls.server_key.read_text() + tls.server_cert.read_text() + tls.ca_file.read_text()
    tls.server_keystore.write_text(keystore)


def ensure_local_tls(directory: Path) -> LocalTLS:
    """Create the CA and the server certificate in ``directory`` unless they are already there."""
    tls = LocalTLS(directory)
    if tls.complete():
        return tls
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    old_umask = os.umask(0o077)  # keys are created owner-only, not chmod-ed after the fact
    try:
        _make_ca(tls)
        _make_server_cert(tls)
    finally:
        os.umask(old_umask)
    tls.ca_file.chmod(0o644)
    tls.server_cert.chmod(0o644)
    return tls
