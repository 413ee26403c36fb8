"""Who runs a domain or a network: the curated entity file and its index.

``geodb/entities.yaml`` (shipped, versioned) lists companies with their
home country, the registrable domains and the AS numbers they use, and
whether their networks host other companies' services (clouds, CDNs,
carriers), and the domains under which a cloud names its customers'
services (``customer_domains``).  A policy's ``entities:`` list adds to it: an entry with the
name of a shipped entity adds domains and AS numbers to it (and may change
its country or ``hosting``); a new name adds a company.

Registrable domains come from tldextract with its bundled Public Suffix
List snapshot, private section included, and never from the network: a
customer's ``d123.cloudfront.net`` is its own registrable domain, not
Amazon's.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tldextract

from leakmap.core.destination import Operator
from leakmap.core.yamlsource import ConfigError, NodePath, Sourced, load

ENTITY_KEYS = ("name", "country", "hosting", "parent", "domains", "customer_domains", "asns", "note")
HOST_CACHE = 65536

# Offline only: no suffix-list URLs, no cache directory; the snapshot inside
# the tldextract wheel is the list (its version pins what "registrable" means).
_EXTRACT = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(),
                                 include_psl_private_domains=True)


def default_entities_path() -> Path:
    return Path(str(resources.files("leakmap.geodb").joinpath("entities.yaml")))


@functools.lru_cache(maxsize=HOST_CACHE)
def registrable_domain(host: str) -> str | None:
    """``api.account.xiaomi.com`` -> ``xiaomi.com``; None for addresses and bare suffixes.

    A name under a top-level domain the list does not know (``lab.example``,
    ``printer.lan``) is taken as registrable at its last two labels.
    """
    name = host.lower().rstrip(".")
    found = _EXTRACT(name)
    if found.top_domain_under_public_suffix:
        return found.top_domain_under_public_suffix
    labels = name.split(".")
    if found.suffix or found.ipv4 or found.ipv6 or len(labels) < 2 or not all(labels[-2:]):
        return None
    return ".".join(labels[-2:])


@dataclass(frozen=True)
class Entity:
    name: str
    country: str | None
    hosting: bool = False
    parent: str | None = None
    domains: tuple[str, ...] = ()
    # names it hands out to customers (aliyuncs.com): a host below one is the customer's
    customer_domains: tuple[str, ...] = ()
    asns: tuple[int, ...] = ()
    note: str = ""
    from_policy: bool = False  # the entity is the policy's own, not a shipped one


# --------------------------------------------------------------------------
# reading entries


def _fail(source: Sourced, where: NodePath, what: str, at_key: bool = False) -> ConfigError:
    return source.error(where, what, at_key)


def _country(source: Sourced, where: NodePath, value: Any) -> str:
    text = (source.as_written(where) or str(value)).strip()
    if len(text) != 2 or not text.isascii() or not text.isalpha():
        raise _fail(source, where, f"'country' must be a two-letter country code, not {text!r}")
    return text.upper()


_DOMAIN = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")


def _domain(source: Sourced, where: NodePath, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, where, "wrong type (expected a domain name such as xiaomi.com)")
    domain = value.strip().lower().rstrip(".")
    if not domain.isascii():
        raise _fail(source, where, f"{domain!r} is not ASCII (write the xn-- form a phone sends, "
                                   f"e.g. {_punycode(domain)!r})")
    if not _DOMAIN.fullmatch(domain):
        raise _fail(source, where, f"{domain!r} is not a domain name (expected a name such as "
                                   "xiaomi.com: no scheme, port, path or spaces)")
    if registrable_domain(domain) is None:
        raise _fail(source, where, f"{domain!r} is a public suffix or not a domain name "
                                   "(expected a registrable domain such as xiaomi.com)")
    return domain


def _punycode(name: str) -> str:
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return "xn--..."


def _asn(source: Sourced, where: NodePath, value: Any) -> int:
    text = (source.as_written(where) or str(value)).strip()
    digits = text[2:] if text[:2].upper() == "AS" else text
    if isinstance(value, bool) or not (digits.isascii() and digits.isdigit()) or int(digits) >= 2**32:
        raise _fail(source, where, f"not an AS number: {text!r} (expected a number like 15169)")
    return int(digits)


def _list(source: Sourced, where: NodePath, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(source, where, f"wrong type: {type(value).__name__} (expected a list)")
    return value


def _entry(source: Sourced, where: NodePath, item: Any, from_policy: bool) -> dict[str, Any]:
    """The checked fields one entry gives (only those it gives)."""
    if not isinstance(item, dict):
        raise _fail(source, where, "each entity must be a mapping with at least 'name'")
    for key in item:
        if key not in ENTITY_KEYS:
            near = difflib.get_close_matches(key, ENTITY_KEYS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(ENTITY_KEYS)}"
            raise _fail(source, (*where, key), f"unknown key {key!r} ({hint})", at_key=True)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, where, "entity has no 'name' (expected the company's name)")
    fields: dict[str, Any] = {"name": name.strip(), "from_policy": from_policy}
    if item.get("country") is not None:
        fields["country"] = _country(source, (*where, "country"), item["country"])
    if "hosting" in item:
        if not isinstance(item["hosting"], bool):
            raise _fail(source, (*where, "hosting"), "wrong type (expected true or false)")
        fields["hosting"] = item["hosting"]
    for key in ("parent", "note"):
        if item.get(key) is not None:
            fields[key] = str(item[key])
    for key in ("domains", "customer_domains"):
        fields[key] = tuple(_domain(source, (*where, key, i), v)
                            for i, v in enumerate(_list(source, (*where, key), item.get(key))))
    fields["asns"] = tuple(_asn(source, (*where, "asns", i), v)
                           for i, v in enumerate(_list(source, (*where, "asns"), item.get("asns"))))
    return fields


def parse_entities(source: Sourced, base: NodePath, items: Any,
                   from_policy: bool = False) -> list[dict[str, Any]]:
    """Checked entity entries from the list at ``base`` of a loaded YAML file."""
    entries = [_entry(source, (*base, i), item, from_policy)
               for i, item in enumerate(_list(source, base, items))]
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry["name"] in seen:
            raise _fail(source, (*base, index, "name"),
                        f"entity {entry['name']!r} given twice (first as entry {seen[entry['name']] + 1})")
        seen[entry["name"]] = index
        if "country" not in entry and (not from_policy or entry["name"] not in shipped_names()):
            raise _fail(source, (*base, index), f"entity {entry['name']!r} has no 'country' "
                                               "(needed for a company the entity file does not list)")
    return entries


@functools.cache
def shipped_names() -> frozenset[str]:
    """Names in the shipped entity file (those a policy may extend without a country)."""
    return frozenset(entry["name"] for entry in load_entity_file().entries)


@dataclass(frozen=True)
class EntityFile:
    path: Path
    version: str
    entries: list[dict[str, Any]]


def load_entity_file(path: str | Path | None = None) -> EntityFile:
    """The shipped entity file (or ``path``); ConfigError "FILE:LINE:COL: ..." on a mistake."""
    file_path = Path(path) if path else default_entities_path()
    source = load(file_path, "entities")
    data = source.data
    if not isinstance(data, dict) or "entities" not in data:
        raise _fail(source, (), "expected a mapping with 'version' and 'entities'")
    for key in data:
        if key not in ("version", "entities"):
            raise _fail(source, (key,), f"unknown key {key!r} (one of version, entities)", True)
    version = source.as_written(("version",)) or str(data.get("version") or "")
    return EntityFile(file_path, version, parse_entities(source, ("entities",), data["entities"]))


# --------------------------------------------------------------------------
# the index


def _merge(base: Entity | None, fields: dict[str, Any]) -> Entity:
    """A policy entry over a shipped entity of the same name: lists add up."""
    if base is None:
        return Entity(**fields)
    lists = ("domains", "customer_domains", "asns")
    changed = {k: v for k, v in fields.items() if k not in (*lists, "name", "from_policy")}
    added: dict[str, Any] = {k: tuple(dict.fromkeys(getattr(base, k) + fields.get(k, ())))
                             for k in lists}
    return dataclasses.replace(base, **changed, **added)


class EntityIndex:
    """Domain -> entity and ASN -> entity; later entries (the policy's) win."""

    def __init__(self, entries: Iterable[dict[str, Any]], version: str = "") -> None:
        self.version = version
        self.entities: dict[str, Entity] = {}
        # name and whether the policy (not the shipped file) put it there
        self._domains: dict[str, tuple[str, bool] | None] = {}  # None: a customer's name
        self._asns: dict[int, tuple[str, bool]] = {}
        self._decided_by_policy: set[str] = set()  # shipped entities whose country or hosting it set
        for fields in entries:
            name, from_policy = fields["name"], bool(fields.get("from_policy"))
            if from_policy and name in self.entities and fields.keys() & {"country", "hosting"}:
                self._decided_by_policy.add(name)
            self.entities[name] = _merge(self.entities.get(name), fields)
            for domain in fields.get("customer_domains", ()):
                self._domains[domain] = None
            for domain in fields.get("domains", ()):
                self._domains[domain] = (name, from_policy)
            for asn in fields.get("asns", ()):
                self._asns[asn] = (name, from_policy)
        self._by_host = functools.lru_cache(maxsize=HOST_CACHE)(self._find_host)

    def _operator(self, listed: tuple[str, bool]) -> Operator:
        entity = self.entities[listed[0]]
        from_policy = listed[1] or entity.name in self._decided_by_policy
        return Operator(entity.name, entity.country, entity.hosting, from_policy)

    def registrable(self, host: str) -> str | None:
        return registrable_domain(host)

    def by_host(self, host: str) -> tuple[Operator, str] | None:
        """The entity of host (or of a parent name down to its registrable domain)."""
        return self._by_host(host.lower().rstrip("."))

    def _find_host(self, host: str) -> tuple[Operator, str] | None:
        domain = registrable_domain(host)
        if domain is None:
            return None
        name = host
        while True:
            if name in self._domains:
                listed = self._domains[name]
                if listed is None:  # below a cloud's customer domain: the customer's, unknown
                    return None
                return self._operator(listed), name
            if name == domain or "." not in name:
                return None
            name = name.split(".", 1)[1]

    def by_asn(self, asn: int) -> Operator | None:
        listed = self._asns.get(asn)
        return self._operator(listed) if listed is not None else None

    def entity(self, name: str) -> Entity | None:
        return self.entities.get(name)


def build_index(policy_entries: Iterable[dict[str, Any]] = (),
                path: str | Path | None = None) -> EntityIndex:
    """The shipped (or given) entity file plus a policy's additions."""
    shipped = load_entity_file(path)
    return EntityIndex([*shipped.entries, *policy_entries], shipped.version)
