"""TlsConfig and the client token, without a network: which channel is opened, what every call sends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadwarden.sdk import AsyncClient, Client, TlsConfig
from loadwarden.sdk._base import CHANNEL_OPTIONS
from loadwarden.sdk._tls import bearer_metadata

from ..._certs import Certs, make_certs
from .conftest import FakeChannel, as_aio_channel, as_channel

TOKEN = "sdk-unit-client-token-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class MetadataChannel(FakeChannel):
    """A FakeChannel that also records the metadata of every call."""

    def __init__(self, *, asynchronous: bool = False) -> None:
        super().__init__(asynchronous=asynchronous)
        self.metadata: list[Any] = []

    def unary_unary(self, path: str, **kwargs: Any) -> Any:
        inner = super().unary_unary(path, **kwargs)

        def call(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.metadata.append(metadata)
            return inner(request, timeout)

        return call


def test_the_token_goes_out_as_one_prebuilt_tuple_on_every_call() -> None:
    channel = MetadataChannel()
    with Client(channel=as_channel(channel), token=TOKEN, retry=None) as client:
        client.select("api")
        client.load_status("api")
        client.batch_size("import")
    assert channel.metadata[0] == (("authorization", f"Bearer {TOKEN}"),)
    assert all(m is channel.metadata[0] for m in channel.metadata)  # built once, not per call


async def test_the_async_client_sends_the_token_too() -> None:
    channel = MetadataChannel(asynchronous=True)
    async with AsyncClient(channel=as_aio_channel(channel), token=TOKEN, retry=None) as client:
        await client.select("api")
        await client.load_status()
    assert channel.metadata == [(("authorization", f"Bearer {TOKEN}"),)] * 2


def test_without_a_token_no_metadata_is_sent() -> None:
    channel = MetadataChannel()
    with Client(channel=as_channel(channel), retry=None) as client:
        client.select("api")
    assert channel.metadata == [None]


@pytest.mark.parametrize("token", ["", "has space-0123456789", "tab\there-0123456789", "naïve-0123456789", 42])
def test_a_bad_token_is_refused_without_being_shown(token: Any) -> None:
    with pytest.raises(ValueError, match="token") as error:
        bearer_metadata(token)
    assert not (isinstance(token, str) and token and token in str(error.value))


def test_tls_opens_a_secure_channel_with_the_files_read_once(monkeypatch: pytest.MonkeyPatch, certs: Certs) -> None:
    opened: list[tuple[str, Any, tuple[Any, ...]]] = []

    def secure_channel(target: str, credentials: Any, options: Any = ()) -> FakeChannel:
        opened.append((target, credentials, tuple(options)))
        return FakeChannel()

    monkeypatch.setattr(grpc, "secure_channel", secure_channel)
    tls = TlsConfig(
        ca=certs.ca, cert=str(certs.client_cert), key=certs.client_key.read_bytes(), server_name="loadwarden.test"
    )
    Client("10.0.0.1:50051", tls=tls).close()
    [(target, credentials, options)] = opened
    assert target == "10.0.0.1:50051" and isinstance(credentials, grpc.ChannelCredentials)
    assert options == (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "loadwarden.test"))


def test_tls_config_validates_its_fields(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(ValueError, match=re.escape("tls.cert and tls.key")):
        TlsConfig(cert=certs.client_cert)
    with pytest.raises(ValueError, match=re.escape("tls.ca must be PEM bytes or a file path")):
        TlsConfig(ca=123)  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
    with pytest.raises(ValueError, match=re.escape("tls.ca must not be empty")):
        TlsConfig(ca=b"")
    with pytest.raises(ValueError, match=re.escape("tls.server_name")):
        TlsConfig(server_name="")
    key = certs.client_key.read_bytes()
    assert b"PRIVATE" not in repr(TlsConfig(cert=certs.client_cert, key=key)).encode()


def test_unreadable_tls_files_fail_the_client_naming_the_field(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(ValueError, match=r"tls.ca: cannot read .*missing.pem"):
        Client("127.0.0.1:1", tls=TlsConfig(ca=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match=re.escape("tls.key: not PEM data")):
        AsyncClient("127.0.0.1:1", tls=TlsConfig(cert=certs.client_cert, key=b"not a key"))
    with pytest.raises(ValueError, match="tls must be a TlsConfig"):
        Client("127.0.0.1:1", tls=str(certs.ca))  # type: ignore[arg-type]  # a wrong type on purpose: the check under test


def test_tls_with_a_given_channel_is_refused(certs: Certs) -> None:
    with pytest.raises(ValueError, match="given channel"):
        Client(channel=as_channel(FakeChannel()), tls=TlsConfig(ca=certs.ca))
