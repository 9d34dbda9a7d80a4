"""How a client reaches a secured service: TLS settings and the bearer token.

The token travels as ``authorization: Bearer <token>`` metadata, built once per
client and passed to every call as is, so it costs the hot path nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

PemSource = bytes | str | os.PathLike[str]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings of the channel a client opens (``Client(..., tls=TlsConfig(...))``).

    Each PEM source is either the PEM bytes themselves or a file path (``str`` or
    ``os.PathLike``); files are read once, when the client is created.

    Attributes:
        ca: CA certificates that verify the service's certificate; None uses the
            root certificates bundled with gRPC.
        cert: Client certificate chain, for services that require client
            certificates (mutual TLS); needs `key`.
        key: Private key of `cert` (unencrypted PEM); never shown in a repr.
        server_name: Name to check the service's certificate against instead of the
            target's host, e.g. when dialling an IP address whose certificate names a
            DNS name; None checks the target's host.

    Raises:
        ValueError: A field has the wrong kind, or only one of `cert` and `key` is set.
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bytes | str | os.PathLike):
                raise ValueError(f"tls.{name} must be PEM bytes or a file path, got a {type(value).__name__}")
            if value is not None and not (value if isinstance(value, bytes) else os.fspath(value)):
                raise ValueError(f"tls.{name} must not be empty")
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be given together (a client certificate needs its key)")
        if self.server_name is not None and (not isinstance(self.server_name, str) or not self.server_name):
            raise ValueError(f"tls.server_name must be a non-empty string or None, got {self.server_name!r}")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """``grpc.ssl_channel_credentials`` for these settings; reads the files.

        Raises:
            ValueError: A file cannot be read or holds no PEM data; the message names the field.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "tls.ca"),
            private_key=_pem(self.key, "tls.key"),
            certificate_chain=_pem(self.cert, "tls.cert"),
        )

    def channel_options(self) -> tuple[tuple[str, Any], ...]:
        """Extra channel options: the certificate name override, if any."""
        if self.server_name is None:
            return ()
        return (("grpc.ssl_target_name_override", self.server_name),)


def _pem(source: PemSource | None, name: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{name}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{name}: not PEM data (expected a '-----BEGIN ...' block)")
    return data


def bearer_metadata(token: str | None) -> Metadata | None:
    """The call metadata carrying `token`, or None without one.

    Raises:
        ValueError: The token is not printable ASCII without spaces (the message never shows it).
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise ValueError("token must be a string or None, got a non-string value")
    if not token or not all("!" <= c <= "~" for c in token):
        raise ValueError("token must be a non-empty string of printable ASCII characters without spaces")
    return (("authorization", f"Bearer {token}"),)


def channel_security(
    tls: TlsConfig | None, channel_given: bool
) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, Any], ...]]:
    """The credentials (None: plaintext) and extra options of the channel a client opens.

    Raises:
        ValueError: `tls` is not a TlsConfig, is combined with a caller's channel, or a file is unusable.
    """
    if tls is None:
        return None, ()
    if not isinstance(tls, TlsConfig):
        raise ValueError(f"tls must be a TlsConfig or None, got a {type(tls).__name__}")
    if channel_given:
        raise ValueError("tls applies to the channel the client opens; a given channel brings its own credentials")
    return tls.channel_credentials(), tls.channel_options()
