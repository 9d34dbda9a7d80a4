"""The client key of a request: the client's address through trusted proxies, or the app's function."""

from __future__ import annotations

import logging

import pytest

from loadwarden.sdk.integrations import TrustedProxies
from loadwarden.sdk.integrations._client_key import ClientKeys, ThrottledLog, as_key, client_address

XFF_TWO = TrustedProxies(count=2)
PROXIES = TrustedProxies(networks=("10.0.0.0/8", "::1"))


@pytest.mark.parametrize(
    ("peer", "values", "trusted", "client"),
    [
        # No proxies configured: the header is never read, whatever it says.
        ("203.0.113.9", ["1.2.3.4"], None, "203.0.113.9"),
        # A count of proxies: the count-th entry from the right.
        ("10.0.0.2", ["198.51.100.7, 10.0.0.1"], XFF_TWO, "198.51.100.7"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.0.0.1"], XFF_TWO, "198.51.100.7"),  # a spoofed left part
        ("10.0.0.2", ["6.6.6.6", "198.51.100.7, 10.0.0.1"], XFF_TWO, "198.51.100.7"),  # two header lines, in order
        ("10.0.0.2", ["198.51.100.7"], XFF_TWO, "198.51.100.7"),  # fewer hops than proxies: the left-most
        ("10.0.0.2", [], XFF_TWO, "10.0.0.2"),  # no header: the peer
        # Known proxy networks: the right-most address that is not a proxy.
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.9.9.9"], PROXIES, "198.51.100.7"),
        ("10.0.0.2", ["10.1.1.1, 10.9.9.9"], PROXIES, "10.1.1.1"),  # every hop a proxy: the left-most
        ("198.51.100.7", ["1.2.3.4"], PROXIES, "198.51.100.7"),  # not from a proxy: the header is ignored
        ("::1", ["2001:db8::5"], PROXIES, "2001:db8::5"),
        # Address forms: ports, brackets, zone ids, IPv4-mapped IPv6.
        ("10.0.0.2", ["198.51.100.7:5123, 10.0.0.1"], XFF_TWO, "198.51.100.7"),
        ("10.0.0.2", ["[2001:db8::1]:443, 10.0.0.1"], XFF_TWO, "2001:db8::1"),
        ("::ffff:203.0.113.9", [], None, "203.0.113.9"),
        ("fe80::1%eth0", [], None, "fe80::1"),
        (None, [], None, ""),
        ("/run/app.sock", [], None, ""),
    ],
)
def test_the_client_is_the_right_most_untrusted_hop(
    peer: str | None, values: list[str], trusted: TrustedProxies | None, client: str
) -> None:
    assert client_address(peer, values, trusted) == (client, None)


def test_forwarded_reads_the_for_values_of_rfc_7239() -> None:
    trusted = TrustedProxies("Forwarded", count=1)
    header = ['for=6.6.6.6;proto=http, for="[2001:db8:cafe::17]:4711";by="a,b";proto=https']
    assert client_address("10.0.0.2", header, trusted) == ("2001:db8:cafe::17", None)
    assert client_address("10.0.0.2", ["For=192.0.2.60"], trusted) == ("192.0.2.60", None)


@pytest.mark.parametrize(
    ("trusted", "values", "problem"),
    [
        (TrustedProxies(count=1), ["garbage"], "'garbage' is not an IP address"),
        (TrustedProxies(count=1), ["1.2.3.4, unknown"], "'unknown' is not an IP address"),
        (TrustedProxies("Forwarded", count=1), ["proto=https"], "without for="),
        (TrustedProxies("Forwarded", count=1), ["for=_hidden"], "'_hidden' is not an IP address"),
        (PROXIES, ["1.2.3.4, not-an-ip"], "'not-an-ip' is not an IP address"),
    ],
)
def test_a_malformed_header_falls_back_to_the_peer_and_says_why(
    trusted: TrustedProxies, values: list[str], problem: str
) -> None:
    address, why = client_address("10.0.0.2", values, trusted)
    assert address == "10.0.0.2"
    assert why is not None and problem in why and trusted.header in why


def test_a_huge_header_is_read_from_its_right_end_only() -> None:
    header = ", ".join(["6.6.6.6"] * 100_000 + ["198.51.100.7", "10.0.0.1"])
    assert client_address("10.0.0.2", [header], XFF_TWO) == ("198.51.100.7", None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of count"),
        ({"count": 1, "networks": ("10.0.0.0/8",)}, "exactly one of count"),
        ({"count": -1}, "count must be an int"),
        ({"networks": ("10.0.0.0/33",)}, "networks: '10.0.0.0/33'"),
        ({"networks": "10.0.0.0/8"}, "networks must be a sequence"),
        ({"header": "X Forwarded", "count": 1}, "header must be an HTTP header name"),
    ],
)
def test_bad_trusted_proxies_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrustedProxies(**kwargs)  # type: ignore[arg-type]  # wrong types on purpose


def test_networks_given_as_a_list_are_kept_as_a_tuple() -> None:
    proxies = TrustedProxies(networks=["10.0.0.0/8"])  # a list, as settings.py would give
    assert proxies.networks == ("10.0.0.0/8",)
    assert hash(proxies) == hash(TrustedProxies(networks=("10.0.0.0/8",)))


def test_keys_that_are_not_names_are_sent_hashed() -> None:
    assert as_key("user-42@example.com") == "user-42@example.com"
    hashed = as_key("Zoë Q. Public")
    assert hashed.startswith("sha256:") and len(hashed) == 71
    assert as_key("Zoë Q. Public") == hashed and as_key("x" * 129) != as_key("x" * 130)


Request = dict[str, str]


def keys(function: object = None, trusted: TrustedProxies | None = None) -> ClientKeys[Request]:
    return ClientKeys(
        function,  # type: ignore[arg-type]  # some tests pass a broken function on purpose
        trusted,
        lambda r: r.get("peer"),
        lambda r, name: [r[name]] if name in r else [],
    )


def test_a_function_that_raises_or_returns_a_non_string_falls_back_to_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: Request) -> str:
        raise KeyError("user")

    with caplog.at_level(logging.ERROR, "loadwarden.sdk.integrations"):
        assert keys(broken)({"peer": "198.51.100.7"}) == "198.51.100.7"
        assert keys(lambda r: 42)({"peer": "198.51.100.7"}) == "198.51.100.7"
    raised, wrong_type = caplog.records
    assert "raised" in raised.getMessage() and raised.exc_info is not None
    assert "returned int" in wrong_type.getMessage()
    assert keys(lambda r: None)({"peer": "198.51.100.7"}) == ""  # anonymous on purpose
    assert keys(lambda r: r["user"])({"user": "ann"}) == "ann"


def test_problems_are_logged_once_a_minute_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "loadwarden.sdk.integrations"):
        for _ in range(5):
            log.log(logging.WARNING, "header", "bad header")
        log.log(logging.WARNING, "other", "another kind")
        now[0] = 61.0
        log.log(logging.WARNING, "header", "bad header")
    assert [r.getMessage() for r in caplog.records] == [
        "bad header",
        "another kind",
        "bad header (4 more like it in the last 60 s)",
    ]
