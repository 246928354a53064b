"""The address policy on its own: which addresses the downloader may connect to.

IPv6 transition addresses (6to4, Teredo, NAT64) lead to the IPv4 address inside them, so
they must not become a way around the IPv4 rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anime_face_id.netguard import AddressPolicy, address_kind, embedded_ipv4

TRANSITION_PREFIXES = ["2002::/16", "2001::/32", "64:ff9b::/96"]

# Teredo hides the client's IPv4 address inverted in the last 32 bits.
TEREDO_PRIVATE_CLIENT = "2001:0:4136:e378:8000:63bf:f5ff:fffe"  # server 65.54.227.120, 10.0.0.1
TEREDO_PUBLIC_CLIENT = "2001:0:4136:e378:8000:63bf:f7f7:f7f7"  # server 65.54.227.120, 8.8.8.8


def refusal(address: str, allowed: list[str] | None = None) -> str | None:
    return AddressPolicy.from_cidrs(allowed or []).refusal(ipaddress.ip_address(address))


def sixtofour(ipv4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(ipv4) << 80))


def nat64(ipv4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ipv4))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # IPv4-mapped: judged as the IPv4 address it is
        ("10.0.0.1", "refused private address 10.0.0.1"),
        ("169.254.169.254", "refused link-local address 169.254.169.254"),
        ("::1", "refused loopback address ::1"),
        ("fe80::1", "refused link-local address fe80::1"),
        ("fc00::1", "refused private address fc00::1"),
        ("fec0::1", "refused site-local address fec0::1"),
        ("fefe:1::9", "refused site-local address fefe:1::9"),
        ("::ffff:10.0.0.1", "refused private address ::ffff:a00:1"),
        ("::ffff:127.0.0.1", "refused loopback address ::ffff:7f00:1"),
        ("2002:a00:1::", "refused 6to4 address 2002:a00:1:: (embeds 10.0.0.1)"),
        ("2002:7f00:1::1", "refused 6to4 address 2002:7f00:1::1 (embeds 127.0.0.1)"),
        ("2002:a9fe:a9fe::", "refused 6to4 address 2002:a9fe:a9fe:: (embeds 169.254.169.254)"),
        ("2002:808:808::", "refused 6to4 address 2002:808:808:: (embeds 8.8.8.8)"),
        (
            TEREDO_PRIVATE_CLIENT,
            f"refused teredo address {TEREDO_PRIVATE_CLIENT} (embeds 65.54.227.120, 10.0.0.1)",
        ),
        ("64:ff9b::a00:1", "refused nat64 address 64:ff9b::a00:1 (embeds 10.0.0.1)"),
        ("64:ff9b::808:808", "refused nat64 address 64:ff9b::808:808 (embeds 8.8.8.8)"),
        (
            "64:ff9b:1::a00:1",
            "refused nat64 address 64:ff9b:1::a00:1 (embeds 0.0.0.0, 0.0.0.10, 10.0.0.1)",
        ),
    ],
)
def test_address_policy_without_allowed_networks(address: str, reason: str | None) -> None:
    assert refusal(address) == reason


@pytest.mark.parametrize(
    ("address", "allowed", "reason"),
    [
        # an allowed transition prefix still refuses a non-public IPv4 address inside it
        ("2002:808:808::", TRANSITION_PREFIXES, None),
        (
            "2002:a00:1::",
            TRANSITION_PREFIXES,
            "refused private address 2002:a00:1:: (embeds 10.0.0.1)",
        ),
        ("2002:a00:1::", ["2002::/16", "10.0.0.0/8"], None),
        ("64:ff9b::808:808", TRANSITION_PREFIXES, None),
        (
            "64:ff9b::a9fe:a9fe",
            TRANSITION_PREFIXES,
            "refused link-local address 64:ff9b::a9fe:a9fe (embeds 169.254.169.254)",
        ),
        (TEREDO_PUBLIC_CLIENT, TRANSITION_PREFIXES, None),
        (
            TEREDO_PRIVATE_CLIENT,
            TRANSITION_PREFIXES,
            f"refused private address {TEREDO_PRIVATE_CLIENT} (embeds 65.54.227.120, 10.0.0.1)",
        ),
        # local-use NAT64 (RFC 8215): the allowed prefix's length says where the IPv4 sits
        ("64:ff9b:1:abcd::808:808", ["64:ff9b:1:abcd::/96"], None),
        (
            "64:ff9b:1:abcd::a00:1",
            ["64:ff9b:1:abcd::/96"],
            "refused private address 64:ff9b:1:abcd::a00:1 (embeds 10.0.0.1)",
        ),
        (  # the gateway may use a longer prefix inside an allowed /48: /96 reads 10.0.0.1
            "64:ff9b:1:abcd::a00:1",
            ["64:ff9b:1::/48"],
            "refused private address 64:ff9b:1:abcd::a00:1 "
            "(embeds 171.205.0.0, 205.0.0.0, 0.0.0.10, 10.0.0.1)",
        ),
        (
            "64:ff9b:1:a00:1::",
            ["64:ff9b:1::/48"],
            "refused private address 64:ff9b:1:a00:1:: (embeds 10.0.1.0, 0.1.0.0, 1.0.0.0, 0.0.0.0)",
        ),
        (  # a wider allowance says nothing of the length: every reading must pass
            "64:ff9b:1::a00:1",
            ["64:ff9b::/32"],
            "refused unspecified address 64:ff9b:1::a00:1 (embeds 0.0.0.0, 0.0.0.10, 10.0.0.1)",
        ),
        ("fec0::1", ["fec0::/10"], None),
        ("127.0.0.1", ["127.0.0.0/8"], None),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], None),
        # an IPv6 network never allows an IPv4 address
        ("10.0.0.1", ["::/0"], "refused private address 10.0.0.1"),
        ("127.0.0.1", ["::/0"], "refused loopback address 127.0.0.1"),
    ],
)
def test_address_policy_with_allowed_networks(
    address: str, allowed: list[str], reason: str | None
) -> None:
    assert refusal(address, allowed) == reason


def test_embedded_ipv4_of_each_transition_mechanism() -> None:
    def embedded(address: str) -> list[str]:
        return [str(each) for each in embedded_ipv4(ipaddress.ip_address(address))]

    assert embedded("2002:c000:204::1") == ["192.0.2.4"]
    assert embedded(TEREDO_PUBLIC_CLIENT) == ["65.54.227.120", "8.8.8.8"]
    assert embedded("64:ff9b::c000:204") == ["192.0.2.4"]
    assert embedded("2606:4700::1111") == embedded("192.0.2.4") == []


NON_PUBLIC_IPV4 = st.sampled_from(
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
).flatmap(lambda network: st.ip_addresses(network=network))


@given(NON_PUBLIC_IPV4, st.booleans())
def test_no_transition_address_reaches_a_non_public_ipv4(
    ipv4: ipaddress.IPv4Address, prefixes_allowed: bool
) -> None:
    policy = AddressPolicy.from_cidrs(TRANSITION_PREFIXES if prefixes_allowed else [])
    for address in (sixtofour(ipv4), nat64(ipv4), ipaddress.IPv6Address(f"::ffff:{ipv4}")):
        assert policy.refusal(ipv4) is not None
        assert policy.refusal(address) is not None, address


@given(st.ip_addresses(v=4).filter(lambda address: address_kind(address) is None))
def test_transition_addresses_of_public_ipv4_only_where_their_prefix_is_allowed(
    ipv4: ipaddress.IPv4Address,
) -> None:
    refusing, allowing = AddressPolicy(), AddressPolicy.from_cidrs(TRANSITION_PREFIXES)
    for address in (sixtofour(ipv4), nat64(ipv4)):
        assert refusing.refusal(address) is not None
        assert allowing.refusal(address) is None
