"""The auth interceptor's decisions and the [auth] config, without a server: fake call details and contexts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest

from loadwarden.server import AdminSettings, AuthSettings, ConfigError, ServiceConfig, load_config
from loadwarden.server.app._config import parse_config
from loadwarden.server.rpc._auth import AuthInterceptor, _presented_token, auth_interceptors

ADMIN_TOKEN = "unit-admin-token-0123456789"
CLIENT_TOKEN = "unit-client-token-0123456789"
SELECT = "/loadwarden.v1.DecisionService/SelectServer"
WATCH = "/loadwarden.v1.DecisionService/WatchLoadStatus"
CONFIGURE = "/loadwarden.v1.AdminService/ConfigurePool"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@dataclass
class Details:
    """grpc.HandlerCallDetails as the server would pass it."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class Aborted(Exception):
    pass


class Context:
    """Records an abort as grpc.aio's context would end the call."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


REAL: grpc.RpcMethodHandler[Any, bytes] = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")


async def decide(interceptor: AuthInterceptor, method: str, *metadata: tuple[str, str]) -> tuple[Any, list[str]]:
    """The handler the interceptor answers with, and the methods it let through to the server."""
    passed: list[str] = []

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, bytes]:
        passed.append(details.method)
        return REAL

    return await interceptor.intercept_service(continuation, Details(method, metadata)), passed


async def refusal(handler: grpc.RpcMethodHandler[Any, Any]) -> Context:
    """Runs a refusing handler; returns the context it aborted."""
    context = Context()
    # grpc's stubs type a handler's behaviours as sync; the interceptor's are grpc.aio ones.
    unary_stream = cast(Callable[..., AsyncIterator[Any]] | None, handler.unary_stream)
    unary_unary = cast(Callable[..., Awaitable[Any]] | None, handler.unary_unary)
    with pytest.raises(Aborted):
        if unary_stream is not None:
            async for _ in unary_stream(b"", context):
                pass
        else:
            assert unary_unary is not None
            await unary_unary(b"", context)
    return context


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


GUARDED = AuthInterceptor(admin_token=ADMIN_TOKEN, client_tokens=[CLIENT_TOKEN], admin_open=True)


# --- the token in the metadata --------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc")], b"abc"),
        ([("authorization", "bearer   abc  ")], b"abc"),
        ([("x-other", "1"), ("authorization", "BEARER abc"), ("authorization", "Bearer second")], b"abc"),
        ([], None),
        ([("authorization", "Bearer ")], None),
        ([("authorization", "Basic YWRtaW46eA==")], None),
        ([("authorization", "abc")], None),
        ([("x-authorization", "Bearer abc")], None),
    ],
)
def test_presented_token(metadata: list[tuple[str, str]], token: bytes | None) -> None:
    assert _presented_token(metadata) == token


# --- decisions -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "token"), [(SELECT, CLIENT_TOKEN), (WATCH, CLIENT_TOKEN), (CONFIGURE, ADMIN_TOKEN)])
async def test_the_right_token_reaches_the_real_handler(method: str, token: str) -> None:
    handler, passed = await decide(GUARDED, method, bearer(token))
    assert handler is REAL and passed == [method]


@pytest.mark.parametrize("method", [SELECT, WATCH, CONFIGURE])
async def test_no_token_is_unauthenticated_before_the_server_is_asked(method: str) -> None:
    handler, passed = await decide(GUARDED, method)
    context = await refusal(handler)
    assert passed == [] and context.code is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in context.details


@pytest.mark.parametrize(
    ("method", "token"),
    [
        (SELECT, ADMIN_TOKEN),  # the admin token is not a client token...
        (CONFIGURE, CLIENT_TOKEN),  # ...nor the client token an admin token
        (WATCH, CLIENT_TOKEN + "x"),
        (CONFIGURE, ADMIN_TOKEN[:-1]),
    ],
)
async def test_a_wrong_token_is_permission_denied_and_never_echoed(method: str, token: str) -> None:
    handler, passed = await decide(GUARDED, method, bearer(token))
    context = await refusal(handler)
    assert passed == [] and context.code is grpc.StatusCode.PERMISSION_DENIED
    assert token not in context.details and ADMIN_TOKEN not in context.details and CLIENT_TOKEN not in context.details


async def test_refusals_keep_the_method_kind_and_parse_no_request() -> None:
    unary, _ = await decide(GUARDED, SELECT)
    stream, _ = await decide(GUARDED, WATCH)
    assert (unary.request_streaming, unary.response_streaming) == (False, False)
    assert (stream.request_streaming, stream.response_streaming) == (False, True)
    assert unary.request_deserializer is None and stream.request_deserializer is None
    assert (await decide(GUARDED, SELECT))[0] is unary  # built once per method and answer


@pytest.mark.parametrize("method", [HEALTH, REFLECTION, "/loadwarden.v1.DecisionService/NoSuchMethod"])
async def test_health_reflection_and_unknown_methods_are_left_to_the_server(method: str) -> None:
    handler, passed = await decide(GUARDED, method)
    assert handler is REAL and passed == [method]


async def test_without_a_client_token_the_data_plane_is_open() -> None:
    interceptor = AuthInterceptor(admin_token=ADMIN_TOKEN, client_tokens=(), admin_open=False)
    assert (await decide(interceptor, SELECT))[0] is REAL
    assert (await refusal((await decide(interceptor, CONFIGURE))[0])).code is grpc.StatusCode.UNAUTHENTICATED


async def test_without_an_admin_token_admin_is_open_on_loopback_and_refused_elsewhere() -> None:
    open_ = AuthInterceptor(admin_token="", client_tokens=(), admin_open=True)
    assert not open_.active
    assert (await decide(open_, CONFIGURE))[0] is REAL

    closed = AuthInterceptor(admin_token="", client_tokens=(), admin_open=False)
    assert closed.active
    for metadata in ((), (bearer(ADMIN_TOKEN),)):
        handler, passed = await decide(closed, CONFIGURE, *metadata)
        context = await refusal(handler)
        assert passed == [] and context.code is grpc.StatusCode.PERMISSION_DENIED
        assert "admin.token" in context.details
    assert (await decide(closed, SELECT))[0] is REAL


def test_auth_interceptors_install_nothing_when_nothing_is_guarded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "loadwarden.server")
    assert auth_interceptors(admin_token="", client_tokens=(), loopback=True, listen="127.0.0.1:1") == ()
    assert "AdminService is open without a token" in caplog.text
    caplog.clear()
    refused = auth_interceptors(admin_token="", client_tokens=(), loopback=False, listen="0.0.0.0:1")
    assert len(refused) == 1
    assert [r.levelname for r in caplog.records if "AdminService is refused on 0.0.0.0:1" in r.getMessage()] == [
        "WARNING"
    ]
    assert len(auth_interceptors(admin_token=ADMIN_TOKEN, client_tokens=(), loopback=True, listen="x:1")) == 1
    assert len(auth_interceptors(admin_token="", client_tokens=[CLIENT_TOKEN], loopback=True, listen="x:1")) == 1
    assert ADMIN_TOKEN not in caplog.text and CLIENT_TOKEN not in caplog.text


# --- config ----------------------------------------------------------------------------


def test_client_token_from_file_and_verbatim_from_the_environment() -> None:
    assert parse_config({}).auth == AuthSettings()
    assert parse_config({"auth": {"client_token": CLIENT_TOKEN}}).auth.client_token == CLIENT_TOKEN
    for token in ("1234567890123456e5", '"quoted-token-0123456"', "true-true-true-true"):
        assert load_config(None, {"LOADWARDEN_AUTH__CLIENT_TOKEN": token}).auth.client_token == token


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"auth": {"client_token": "short"}}, "auth.client_token", "at least 16"),
        ({"auth": {"client_token": "has spaces in the middle"}}, "auth.client_token", "without spaces"),
        ({"auth": {"client_token": 1234567890123456789}}, "auth.client_token", "must be a string"),
        ({"auth": {"admin_token": ADMIN_TOKEN}}, "auth.admin_token", "valid keys: client_token"),
        ({"auth": "x"}, "auth", "table"),
        ({"auth": {"client_token": ADMIN_TOKEN}, "admin": {"token": ADMIN_TOKEN}}, "auth.client_token", "differ"),
    ],
)
def test_invalid_auth_settings_name_the_key_and_never_the_token(raw: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert error.value.key == key and fragment in str(error.value)
    token = raw["auth"].get("client_token") if isinstance(raw["auth"], dict) else None
    assert ADMIN_TOKEN not in str(error.value) and (not isinstance(token, str) or token not in str(error.value))


def test_tokens_are_not_in_reprs() -> None:
    config = ServiceConfig(admin=AdminSettings(token=ADMIN_TOKEN), auth=AuthSettings(client_token=CLIENT_TOKEN))
    assert ADMIN_TOKEN not in repr(config) and CLIENT_TOKEN not in repr(config)
    state = repr(vars(GUARDED))
    assert "AdminService" in state and ADMIN_TOKEN not in state and CLIENT_TOKEN not in state
