"""Test certificates (trustme): a CA, a server certificate for 127.0.0.1/localhost, client certificates.

Everything is written as PEM files into one directory, the way an operator would
hand them to ``[tls]`` and to clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files, and their bytes where tests pass bytes.

    Attributes:
        ca: The CA that issued the server and client certificates.
        server_cert / server_key: The service's chain (leaf first) and key, for 127.0.0.1, ::1 and localhost.
        client_cert / client_key: A client certificate issued by ``ca``.
        rogue_ca / rogue_client_cert / rogue_client_key: Another CA and a client certificate it issued.
        named_cert / named_key: A server certificate for ``loadwarden.test`` only (no IP address).
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    named_cert: Path
    named_key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()


def make_certs(directory: Path) -> Certs:
    """Issues a fresh set of certificates into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, rogue = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    client = ca.issue_cert("client.loadwarden.test")
    rogue_client = rogue.issue_cert("client.loadwarden.test")
    named = ca.issue_cert("loadwarden.test")
    paths = {name: directory / f"{name}.pem" for name in Certs.__dataclass_fields__}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    rogue.cert_pem.write_to_path(str(paths["rogue_ca"]))
    for prefix, issued in (("server", server), ("client", client), ("rogue_client", rogue_client), ("named", named)):
        cert_path = paths[f"{prefix}_cert"]
        cert_path.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(paths[f"{prefix}_key"]))
    return Certs(**paths)
