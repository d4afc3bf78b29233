"""TLS for both services: server credentials that take up renewed certificate files without a restart, and the
channel credentials a service uses to reach another one.

Server side, grpc asks `_CertificateFiles` before every new connection's handshake whether the certificate changed;
it answers from a stat of the files (cheap), and only when they changed reads them, checks that the key fits the
certificate (with the standard library's `ssl`) and hands grpc the new pair. A half-written or mismatched set is
logged and refused, and the connection is served with the previous certificate. Files are stat'ed through symlinks,
so a Kubernetes Secret update (an atomic swap of its `..data` link) shows as a change. Connections already open keep
the certificate they were made with.
"""
from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .watching import file_signature

log = logging.getLogger("tierwise.tls")
RENEW_CHECK_S = 10.0  # how often a client, or the HTTPS port, looks at its TLS files for a renewal


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value not in (None, "") else None


@dataclass(frozen=True)
class ServerTLS:
    """A service's own certificate and key, and the CA its clients' certificates must chain to (mTLS) if any."""
    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None = None,
                      flag: str = "--tls-") -> "ServerTLS | None":
        """None when no certificate is set (plaintext); ValueError naming the flag when the set is incomplete."""
        cert, key, client_ca = _path(cert), _path(key), _path(client_ca)
        if cert is None and key is None:
            if client_ca is not None:
                raise ValueError(f"{flag}client-ca: needs {flag}cert and {flag}key (client certificates are "
                                 "checked only over TLS)")
            return None
        _check_both(cert, key, flag)
        return cls(cert, key, client_ca)

    @property
    def mode(self) -> str:
        return "mtls" if self.client_ca else "tls"

    def signature(self) -> tuple:
        return file_signature(self.cert, self.key, self.client_ca)


@dataclass(frozen=True)
class ClientTLS:
    """How to reach a TLS server: the CA its certificate chains to, and our own certificate for mTLS."""
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_settings(cls, ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None,
                      flag: str = "--tls-") -> "ClientTLS | None":
        """None when no CA is set (plaintext); ValueError naming the flag when the set is incomplete."""
        ca, cert, key = _path(ca), _path(cert), _path(key)
        if ca is None:
            if cert is not None or key is not None:
                raise ValueError(f"{flag}ca: required with {flag}cert/{flag}key (a client certificate is sent "
                                 "only over TLS)")
            return None
        if cert is not None or key is not None:
            _check_both(cert, key, flag)
        return cls(ca, cert, key)

    def signature(self) -> tuple:
        return file_signature(self.ca, self.cert, self.key)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now; OSError or ssl.SSLError when they are unusable."""
        if self.cert is not None:
            check_pair(self.cert, self.key)
        return grpc.ssl_channel_credentials(
            root_certificates=_certificates(self.ca),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


def _check_both(cert: Path | None, key: Path | None, flag: str) -> None:
    """ValueError naming the flag that is missing when only one of a certificate and its key is set."""
    if cert is None or key is None:
        raise ValueError(f"{flag}{'key' if key is None else 'cert'}: required with "
                         f"{flag}{'cert' if key is None else 'key'}")


def check_pair(cert: Path, key: Path) -> None:
    """ssl.SSLError (or OSError) unless `key` is the private key of the certificate in `cert`."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def _certificates(path: Path) -> bytes:
    """The PEM certificates in `path`; ValueError when it holds none, or one that does not parse (a file cut short
    by a copy that is not atomic): grpc would take it, and fail every handshake."""
    pem = path.read_bytes()
    begun = pem.count(b"-----BEGIN CERTIFICATE-----")
    if not begun:
        raise ValueError(f"{path}: holds no PEM certificate")
    # Each certificate alone: a bundle's comments between them may be any text (Mozilla's name issuers in UTF-8).
    blocks = PEM_CERTIFICATE.findall(pem)
    try:
        if len(blocks) != begun:
            raise ValueError(f"{begun - len(blocks)} of its {begun} certificates have no END line")
        ssl.create_default_context(cadata=b"\n".join(blocks).decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: holds a certificate that does not parse ({err})") from None
    return pem


def _configuration(tls: ServerTLS) -> grpc.ServerCertificateConfiguration:
    check_pair(tls.cert, tls.key)
    ca = None
    if tls.client_ca is not None:
        ca = _certificates(tls.client_ca)
    return grpc.ssl_server_certificate_configuration([(tls.key.read_bytes(), tls.cert.read_bytes())],
                                                     root_certificates=ca)


class _CertificateFiles:
    """grpc's certificate-configuration fetcher: a new configuration when the files changed and load cleanly,
    else None (keep serving the current one). Never raises: it runs inside grpc before each handshake."""

    def __init__(self, tls: ServerTLS):
        self.tls = tls
        self._seen = tls.signature()
        self.initial = _configuration(tls)  # errors at start-up are the caller's to report

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        now = self.tls.signature()
        if now == self._seen:
            return None
        try:
            config = _configuration(self.tls)
        except Exception as err:  # noqa: BLE001 - a broken set keeps the serving certificate; the reason is logged
            self._seen = now
            log.error("TLS certificate not reloaded, still serving the previous one: %s", err,
                      extra={"fields": {"cert": str(self.tls.cert)}})
            return None
        if self.tls.signature() != now:
            return None  # changed again while being read: look once more at the next connection
        self._seen = now
        log.info("TLS certificate reloaded", extra={"fields": {"cert": str(self.tls.cert), "mode": self.tls.mode}})
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port` that re-read the files when they change; client certificates are
    required when `tls.client_ca` is set. OSError or ssl.SSLError when the files are unusable now."""
    files = _CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(files.initial, files,
                                               require_client_authentication=tls.client_ca is not None)
