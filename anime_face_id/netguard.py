"""Refuse to connect to private, loopback, link-local and other non-public addresses.

Image URLs come from search results and redirects, i.e. from strangers. Without a guard
a result (or a redirect it answers with) could make the downloader reach the cloud
metadata service at 169.254.169.254 or a service on the internal network. The check runs
inside the connection itself, on the very addresses the socket is about to use, so a
host name that resolves to a public address for a first check and to a private one a
moment later (DNS rebinding) is still refused, and a refused address is never contacted.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedAddress(Exception):
    """A host resolved to an address the policy forbids. Deliberately not an OSError, so
    urllib3 and requests let it through unwrapped instead of retrying or renaming it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None when it is one."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10 carrier-grade NAT
    )
    return next((kind for kind, matches in checks if matches), None)


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses are allowed; non-public ones only inside ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs))

    def refusal(self, address: IPAddress) -> str | None:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:a.b.c.d is a.b.c.d
        effective = mapped or address
        kind = address_kind(effective)
        if kind is None or any(effective in network for network in self.allowed):
            return None
        return f"refused {kind} address {address}"


def resolve_checked(host: str, port: int, policy: AddressPolicy) -> list[tuple]:
    """getaddrinfo results for ``host``; refused when ANY of them is refused, because the
    socket layer may pick any of them (and an attacker controls the order)."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])  # drop an IPv6 zone id
        reason = policy.refusal(address)
        if reason:
            raise RefusedAddress(reason)
    return infos


def connect_checked(
    host: str,
    port: int,
    policy: AddressPolicy,
    timeout: object,
    source_address: tuple[str, int] | None = None,
    socket_options: list | None = None,
) -> socket.socket:
    """Resolve, check every address, then connect to the checked addresses only (as IP
    literals, so nothing resolves the name a second time)."""
    last_error: OSError | None = None
    for _family, _type, _proto, _name, sockaddr in resolve_checked(host, port, policy):
        try:
            return create_connection(
                (sockaddr[0], port),
                timeout,  # type: ignore[arg-type]
                source_address=source_address,
                socket_options=socket_options,
            )
        except OSError as error:
            last_error = error
    raise last_error or OSError(f"no address found for {host}")


class _GuardedConnectionMixin:
    policy: AddressPolicy = AddressPolicy()

    def _new_conn(self) -> socket.socket:
        # Mirrors urllib3's HTTPConnection._new_conn, with the address check added.
        try:
            sock = connect_checked(
                self._dns_host,  # type: ignore[attr-defined]
                self.port,  # type: ignore[attr-defined]
                self.policy,
                self.timeout,  # type: ignore[attr-defined]
                source_address=self.source_address,  # type: ignore[attr-defined]
                socket_options=self.socket_options,  # type: ignore[attr-defined]
            )
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[attr-defined, arg-type]
        except TimeoutError as error:
            raise ConnectTimeoutError(
                self,
                f"Connection to {self.host} timed out. (connect timeout={self.timeout})",  # type: ignore[attr-defined]
            ) from error
        except OSError as error:
            raise NewConnectionError(
                self, f"Failed to establish a new connection: {error}"
            ) from error  # type: ignore[arg-type]
        sys.audit("http.client.connect", self, self.host, self.port)  # type: ignore[attr-defined]
        return sock


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every new connection goes through ``connect_checked``.
    Retries are left to the caller (max_retries=0), proxies are not supported: a proxy
    would make the address check meaningless."""

    def __init__(self, policy: AddressPolicy, pool_maxsize: int = 10):
        self.policy = policy
        super().__init__(max_retries=0, pool_connections=4, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        attributes = {"policy": self.policy}
        http_conn = type(
            "GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attributes
        )
        https_conn = type(
            "GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attributes
        )
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[no-untyped-def]
        raise RefusedAddress("proxies are not supported by the guarded downloader")
