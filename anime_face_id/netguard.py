"""Refuse to connect to private, loopback, link-local and other non-public addresses.

Image URLs come from search results and redirects, i.e. from strangers. Without a guard
a result (or a redirect it answers with) could make the downloader reach the cloud
metadata service at 169.254.169.254 or a service on the internal network. The check runs
inside the connection itself, on the very addresses the socket is about to use, so a
host name that resolves to a public address for a first check and to a private one a
moment later (DNS rebinding) is still refused, and a refused address is never contacted.

IPv6 transition addresses (6to4, Teredo, NAT64) carry an IPv4 address inside them, and a
relay or translator delivers the packets to that IPv4 host, so ``2002:a00:1::`` can reach
10.0.0.1. They are refused outright unless ``allow_networks`` lists their prefix: no image
host needs them (6to4 and Teredo are deprecated, RFC 7526), and where the path leads
depends on relays nobody here controls. Even when a prefix is allowed, the embedded IPv4
address must itself be public or allowed, so allowing 2002::/16 never opens 10.0.0.0/8.

The module also records the sockets an exchange uses (``SocketWatch``), so that the
downloader's deadline can cut a connection whose reads are blocked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
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


# Prefixes whose addresses stand for an IPv4 host behind a relay or translator. Checked
# before Python's own tables, which disagree between versions (3.11 calls 2002::/16 global).
TRANSITION_NETWORKS: tuple[tuple[str, ipaddress.IPv6Network], ...] = (
    ("6to4", ipaddress.IPv6Network("2002::/16")),
    ("teredo", ipaddress.IPv6Network("2001::/32")),
    ("nat64", ipaddress.IPv6Network("64:ff9b::/96")),
    ("nat64", ipaddress.IPv6Network("64:ff9b:1::/48")),  # local-use NAT64, RFC 8215
)
NAT64_WELL_KNOWN = TRANSITION_NETWORKS[2][1]
NAT64_LOCAL_USE = TRANSITION_NETWORKS[3][1]
NAT64_LENGTHS = (48, 56, 64, 96)  # RFC 6052 prefix lengths that fit in the local-use /48


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None when it is one."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        *((kind, address in network) for kind, network in TRANSITION_NETWORKS),
        ("link-local", address.is_link_local),
        # fec0::/10 was deprecated (RFC 3879) but routers may still route it internally,
        # and Python counts it as global
        ("site-local", getattr(address, "is_site_local", False)),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10 carrier-grade NAT
    )
    return next((kind for kind, matches in checks if matches), None)


def embedded_ipv4(
    address: IPAddress, nat64_lengths: tuple[int, ...] = ()
) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a transition address leads to (IPv4-mapped excepted: that one is
    simply the IPv4 address, see ``AddressPolicy.refusal``). ``nat64_lengths``: the
    local-use NAT64 prefix lengths it may be read at (default: every one)."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client); the client part is de-obfuscated
    if address in NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)
    if address in NAT64_LOCAL_USE:
        # The operator picks the prefix length (RFC 6052: /48 to /96 inside this /48), and
        # with it where the IPv4 address sits: unknown, every reading counts.
        lengths = nat64_lengths or NAT64_LENGTHS
        return tuple(dict.fromkeys(_rfc6052_ipv4(address, length) for length in lengths))
    return ()


def _rfc6052_ipv4(address: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address a NAT64 address with a ``prefix_length`` prefix embeds (RFC 6052
    section 2.2: bits 64-71 are zero and skipped)."""
    bits = int(address)

    def field(start: int, length: int) -> int:
        return (bits >> (128 - start - length)) & ((1 << length) - 1)

    before_u = max(0, 64 - prefix_length)  # IPv4 bits between the prefix and bit 64
    high = field(prefix_length, before_u) if before_u else 0
    if prefix_length == 96:
        return ipaddress.IPv4Address(field(96, 32))
    low_bits = 32 - before_u
    return ipaddress.IPv4Address((high << low_bits) | field(72, low_bits))


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses are allowed; non-public ones only inside ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs))

    def refusal(self, address: IPAddress) -> str | None:
        """Why connecting to ``address`` is refused, or None when it is allowed."""
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on the wire
            kind = self._forbidden_kind(mapped)
            return f"refused {kind} address {address}" if kind else None
        embedded = embedded_ipv4(address, self._nat64_lengths(address))
        kinds = (self._forbidden_kind(each) for each in (address, *embedded))
        kind = next((each for each in kinds if each), None)
        if kind is None:
            return None
        inside = f" (embeds {', '.join(map(str, embedded))})" if embedded else ""
        return f"refused {kind} address {address}{inside}"

    def _forbidden_kind(self, address: IPAddress) -> str | None:
        kind = address_kind(address)
        return None if kind is None or self._allows(address) else kind

    def _nat64_lengths(self, address: IPAddress) -> tuple[int, ...]:
        """The local-use NAT64 prefix lengths ``address`` may be read at: those no shorter
        than the longest allowed network inside 64:ff9b:1::/48 that holds it (the gateway
        may use a longer prefix inside an allowed one); every length when none does."""
        allowed = [
            network.prefixlen
            for network in self.allowed
            if network.version == 6 and address in network and network.subnet_of(NAT64_LOCAL_USE)
        ]
        shortest = max(allowed, default=0)
        return tuple(length for length in NAT64_LENGTHS if length >= shortest) or (96,)

    def _allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed)


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
        if _current_watch_is_cut():  # the deadline passed: try no further address
            raise OSError("deadline passed while connecting")
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


# --- cutting an exchange short ---------------------------------------------------------


def _shut_down(sock: socket.socket) -> None:
    """Make every blocked and future read or write on ``sock`` fail at once. Called as the
    plain socket method on purpose: SSLSocket.shutdown also drops its TLS state, which
    the thread blocked in a read is still using."""
    # OSError: already closed, never connected, or detached into a TLS socket
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class SocketWatch:
    """The sockets one exchange has used, so that another thread can cut them all.

    A read blocked in recv() cannot be bounded by a timeout when the server sends one
    byte just before each timeout; shutting the socket down wakes it at once. ``cut``
    after ``finish`` does nothing, because by then the sockets may be back in the pool
    and serving another exchange."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cut = False
        self._finished = False

    @property
    def is_cut(self) -> bool:
        return self._cut

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._finished or any(sock is known for known in self._sockets):
                return
            if self._cut:  # connected just after the deadline: fail its first read
                _shut_down(sock)
            self._sockets.append(sock)

    def cut(self) -> None:
        # Under the lock, so no socket is shut down after finish() handed it back.
        with self._lock:
            if self._finished:
                return
            self._cut = True
            for sock in self._sockets:
                _shut_down(sock)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._sockets.clear()


_exchange = threading.local()  # requests does all its socket work in the calling thread


@contextlib.contextmanager
def watching(watch: SocketWatch) -> Iterator[SocketWatch]:
    """Record in ``watch`` every socket that guarded connections use in this thread."""
    previous = getattr(_exchange, "watch", None)
    _exchange.watch = watch
    try:
        yield watch
    finally:
        _exchange.watch = previous


def _track(sock: socket.socket | None) -> None:
    watch = getattr(_exchange, "watch", None)
    if watch is not None and sock is not None:
        watch.track(sock)


def _current_watch_is_cut() -> bool:
    watch = getattr(_exchange, "watch", None)
    return watch is not None and watch.is_cut


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
        _track(sock)  # the TLS handshake reads this raw socket before it is wrapped
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _track(self.sock)  # type: ignore[attr-defined]  # on https: the wrapped TLS socket

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _track(self.sock)  # type: ignore[attr-defined]  # a pooled connection reused by this exchange
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


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
