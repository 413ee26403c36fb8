"""Where a flow went and whose law reaches it: location, operator, watch.

Two facts per flow stay separate (docs/destinations.md):

* the *server*: the address, its country and city, and the network (AS) it
  sits in, from the geolocation databases;
* the *operator*: the company that runs the service, decided from a network
  override that names one (``--networks``: attribution ``network``; the
  policy's ``networks:``: ``policy``), else from the host's registrable
  domain (``domain``), else from the AS when its owner runs only its own
  services there (``asn``).  Entities the policy adds give ``policy``.  A
  cloud's or CDN's network never names the operator: a domain no entity
  lists, hosted on Amazon, has operator None.

:class:`Locator` combines them and applies the policy's :class:`WatchRule`.
It never does a DNS lookup: an address the capture does not hold is taken
from the DNS answers the capture itself recorded, or stays unknown.

Pure: no mitmproxy, no database, no network.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from leakmap.core.exchange import Exchange

ATTRIBUTIONS = ("domain", "asn", "policy", "network")
RESOLVED_CACHE = 65536


class GeoLike(Protocol):
    scope: str
    country: str | None
    city: str | None
    asn: int | None
    as_org: str | None
    operator: str | None
    operator_country: str | None
    operator_source: str | None


class Resolver(Protocol):
    def lookup(self, ip: str | None) -> GeoLike: ...


@dataclass(frozen=True)
class Operator:
    """A company, its home country, and whether its networks host others."""

    name: str
    country: str | None
    hosting: bool = False
    from_policy: bool = False  # added by the policy's ``entities:``, not the shipped file


class Entities(Protocol):
    def by_host(self, host: str) -> tuple[Operator, str] | None: ...

    def by_asn(self, asn: int) -> Operator | None: ...

    def registrable(self, host: str) -> str | None: ...


@dataclass(frozen=True)
class Destination:
    """What leakmap records about a flow's destination (names match the store)."""

    geo_ip: str | None = None  # the address the location describes
    geo_ip_source: str | None = None  # "server" | "dns" (answer recorded in the capture)
    geo_scope: str | None = None
    country: str | None = None
    city: str | None = None
    asn: int | None = None
    as_org: str | None = None
    domain: str | None = None  # registrable domain of the host
    operator: str | None = None
    operator_country: str | None = None
    attribution: str | None = None  # one of ATTRIBUTIONS, None when unknown
    watched: bool = False
    watch_reason: str | None = None


# --------------------------------------------------------------------------
# watch rules


def _codes(values: Iterable[str]) -> frozenset[str]:
    return frozenset(value.upper() for value in values)


@dataclass(frozen=True)
class WatchRule:
    """Which destinations count as watched.

    Either lists (``countries``/``operator_countries`` are watched) or, for
    data localisation, allow lists: everything outside ``allow_countries``
    / ``allow_operator_countries`` is watched.  Both forms may be combined.
    """

    countries: frozenset[str] = frozenset()
    operator_countries: frozenset[str] = frozenset()
    allow_countries: frozenset[str] | None = None
    allow_operator_countries: frozenset[str] | None = None

    @classmethod
    def from_policy(cls, watch: dict[str, object]) -> WatchRule:
        """The rule from a policy's checked ``watch:`` mapping."""
        allow = watch.get("allow") or {}
        assert isinstance(allow, dict)

        def listed(mapping: dict[str, object], key: str) -> frozenset[str] | None:
            value = mapping.get(key)
            if value is None:
                return None
            return _codes([value] if isinstance(value, str) else value)  # type: ignore[arg-type]

        return cls(
            countries=listed(watch, "countries") or frozenset(),
            operator_countries=listed(watch, "operator_countries") or frozenset(),
            allow_countries=listed(allow, "countries"),
            allow_operator_countries=listed(allow, "operator_countries"),
        )

    def reasons(self, scope: str | None, country: str | None,
                operator_country: str | None) -> list[str]:
        """Why a destination is watched; empty when it is not."""
        found = []
        if country is not None and country in self.countries:
            found.append(f"server_country={country}")
        if operator_country is not None and operator_country in self.operator_countries:
            found.append(f"operator_country={operator_country}")
        if self.allow_countries is not None:
            if country is None and scope == "public":
                found.append("server_country=unknown (not in allow list)")
            elif country is not None and country not in self.allow_countries:
                found.append(f"server_country={country} (not in allow list)")
        if (self.allow_operator_countries is not None and operator_country is not None
                and operator_country not in self.allow_operator_countries):
            found.append(f"operator_country={operator_country} (not in allow list)")
        return found


# --------------------------------------------------------------------------
# addresses the capture resolved


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class ResolvedNames:
    """Host -> address, from DNS answers seen earlier in the same capture or session."""

    def __init__(self, capacity: int = RESOLVED_CACHE) -> None:
        self._addresses: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def learn(self, name: str | None, addresses: Sequence[str]) -> None:
        if not name or not addresses:
            return
        key = name.lower().rstrip(".")
        with self._lock:
            self._addresses[key] = addresses[0]
            self._addresses.move_to_end(key)
            while len(self._addresses) > self._capacity:
                self._addresses.popitem(last=False)

    def address_of(self, name: str | None) -> str | None:
        if not name:
            return None
        with self._lock:
            return self._addresses.get(name.lower().rstrip("."))


# --------------------------------------------------------------------------
# putting it together


MAX_NAME = 253  # longest DNS name; anything longer is junk, not a host


_NAME = re.compile(r"[a-z0-9_*-]+(\.[a-z0-9_*-]+)*")
_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _host_name(exchange: Exchange) -> str | None:
    """The name the app asked for: Host/authority, else SNI, else the DNS question."""
    for candidate in (exchange.host, exchange.sni, exchange.dns_question):
        name = _normalised(candidate) if candidate else None
        if name is not None:
            return name
    return None


@functools.lru_cache(maxsize=4096)  # a capture names a few hosts, thousands of times
def _normalised(text: str) -> str | None:
    """A host name as DNS spells it (lower case, xn-- labels), or None for an address or junk."""
    name = _without_port(text.strip()).translate(_IDNA_DOTS).rstrip(".").lower()
    if not name or len(name) > MAX_NAME or _is_address(name):
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if _NAME.fullmatch(name) else None


def _without_port(host: str) -> str:
    """``api.xiaomi.com:443`` -> ``api.xiaomi.com``; ``[::1]:443`` -> ``[::1]``."""
    head, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (head.endswith("]") or ":" not in head):
        return head
    return host


class Locator:
    """Decides a flow's :class:`Destination`.  Thread-safe; never raises on flow data."""

    def __init__(self, resolver: Resolver, entities: Entities, watch: WatchRule) -> None:
        self.resolver, self.entities, self.watch = resolver, entities, watch
        self.resolved = ResolvedNames()

    def start_capture(self) -> None:
        """Forget the names learned so far: the next capture stands on its own."""
        self.resolved = ResolvedNames()

    def locate(self, exchange: Exchange) -> Destination:
        host = _host_name(exchange)
        if exchange.kind == "dns":
            self.resolved.learn(exchange.dns_question, exchange.dns_answers)
        ip, source = self._address(exchange, host)
        geo = self.resolver.lookup(ip)
        name, country, attribution = self._operator(host, geo)
        reasons = self.watch.reasons(geo.scope, geo.country, country)
        return Destination(
            geo_ip=ip, geo_ip_source=source if ip else None, geo_scope=geo.scope,
            country=geo.country, city=geo.city, asn=geo.asn, as_org=geo.as_org,
            domain=self.entities.registrable(host) if host else None,
            operator=name, operator_country=country, attribution=attribution,
            watched=bool(reasons), watch_reason=", ".join(reasons) or None,
        )

    def _address(self, exchange: Exchange, host: str | None) -> tuple[str | None, str | None]:
        """The address to locate, and where it came from."""
        if exchange.kind == "dns":
            # A DNS record's destination is what the phone is about to reach.
            return (exchange.dns_answers[0], "dns") if exchange.dns_answers else (None, None)
        if exchange.server_ip:
            return exchange.server_ip, "server"
        return self.resolved.address_of(host), "dns"

    def _operator(self, host: str | None,
                  geo: GeoLike) -> tuple[str | None, str | None, str | None]:
        """(operator, operator country, attribution) by the order in the module doc."""
        if geo.operator:  # the analyst named who runs this address range
            return geo.operator, geo.operator_country, geo.operator_source or "network"
        if host:
            found = self.entities.by_host(host)
            if found is not None:
                return _decided(found[0], "domain")
        if geo.asn is not None:
            owner = self.entities.by_asn(geo.asn)
            if owner is not None and not owner.hosting:
                return _decided(owner, "asn")
        return None, None, None


def _decided(owner: Operator, how: str) -> tuple[str, str | None, str]:
    return owner.name, owner.country, "policy" if owner.from_policy else how
