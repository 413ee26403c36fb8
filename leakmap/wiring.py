"""Builds the analysis pipeline from settings.

The live addon and ``leakmap analyze`` both call :func:`build_pipeline`, so a
capture analysed offline goes through exactly what the proxy ran.  Every
configuration mistake comes out as :class:`ConfigError` with one line.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leakmap.core.classify import Classifier
from leakmap.core.decode import Limits
from leakmap.core.destination import Locator, WatchRule
from leakmap.core.device import DeviceProfile, load_device
from leakmap.core.known import KnownMatcher, matcher_inputs
from leakmap.core.pipeline import Pipeline
from leakmap.core.yamlsource import ConfigError
from leakmap.geodb.entities import EntityIndex, build_index
from leakmap.geodb.lookup import GeoResolver, load_networks
from leakmap.policies.model import Policy, load_policy
from leakmap.store.db import default_db_url, hash_key_for, leakmap_home


@dataclass
class Loaded:
    """The settings read and checked: all a run records, without the classifier."""

    policy: Policy
    device: DeviceProfile
    resolver: GeoResolver
    entities: EntityIndex
    locator: Locator
    key: bytes
    limits: Limits


@dataclass
class Assembled(Loaded):
    pipeline: Pipeline


def build_locator(policy: Policy, geoip_dir: str = "",
                  networks: str = "") -> tuple[GeoResolver, EntityIndex, Locator]:
    """Geolocation, operator entities and watch rule of a policy; ConfigError on a mistake."""
    # the policy's networks first, so that --networks wins where both name a range
    overrides = [*policy.networks, *(load_networks(networks) if networks else [])]
    resolver = GeoResolver(geoip_dir or None, overrides)  # GeoConfigError is a ConfigError
    try:
        entities = build_index(policy.entities)
    except ConfigError:
        resolver.close()
        raise
    return resolver, entities, Locator(resolver, entities, WatchRule.from_policy(policy.watch))


def load_settings(
    policy: str = "",
    device: str = "",
    db: str = "",
    geoip_dir: str = "",
    networks: str = "",
    hash_key_file: str = "",
    max_body: int = Limits.max_body_bytes,
    analysis_budget_ms: int = Limits.budget_ms,
) -> Loaded:
    """Load policy, device, geodb and key; raise ConfigError on any mistake.

    What :func:`build_pipeline` checks, in a fraction of its time: ``leakmap
    analyze`` with a worker process needs no classifier of its own.
    """
    loaded_policy = load_policy(policy or None)
    profile = load_device(device or None)
    resolver, entities, locator = build_locator(loaded_policy, geoip_dir, networks)
    try:
        key = hash_key_for(db or default_db_url(), hash_key_file or None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{hash_key_file or 'hash key'}: cannot read or create key ({e})") from e
    if max_body < 1:
        raise ConfigError(f"max_body: {max_body} is not a size (expected a number of bytes >= 1)")
    if analysis_budget_ms < 0:
        raise ConfigError(f"analysis_budget_ms: {analysis_budget_ms} is not a budget "
                          "(expected milliseconds, or 0 for no limit)")
    limits = Limits(max_body_bytes=max_body, budget_ms=analysis_budget_ms)
    return Loaded(loaded_policy, profile, resolver, entities, locator, key, limits)


def build_pipeline(store_raw: bool = False, **settings: Any) -> Assembled:
    """The settings loaded (:func:`load_settings`, same keywords) and the pipeline built on them."""
    loaded = load_settings(**settings)
    known = cached_matcher(loaded.policy, loaded.device)
    classifier = Classifier(loaded.policy, loaded.device, loaded.limits, known)
    pipeline = Pipeline(classifier, loaded.locator, loaded.key, store_raw)
    # The matcher alone is some 300,000 objects for a 1,000-value profile; every full
    # collection would walk them again (a pause of 100 ms and more, every few hundred
    # flows). Frozen, they are left out: only what each flow makes is collected.
    gc.freeze()
    return Assembled(**vars(loaded), pipeline=pipeline)


def cached_matcher(policy: Policy, device: DeviceProfile,
                   folder: Path | None = None) -> KnownMatcher:
    """The known-value matcher, from ``$LEAKMAP_HOME/cache`` when it was built before.

    A 1,000-value profile takes seconds to expand into its written forms and
    digests and to compile; the cache file is named by the SHA-256 of
    everything the matcher is built from (``matcher_inputs``: the known values,
    the policy's transforms and the matcher's code).  It holds the known values
    in clear, like the profile itself: the folder is 0700, the file 0600, and a
    file that another user could have written is ignored.
    """
    types = list(policy.data_types.values())
    digest = hashlib.sha256(matcher_inputs(types, device)).hexdigest()[:32]
    path = (folder or leakmap_home() / "cache") / f"known-{digest}.pickle"
    matcher = _load_matcher(path)
    if matcher is None:
        matcher = KnownMatcher(types, device)
        _save_matcher(path, matcher)
    return matcher


def _load_matcher(path: Path) -> KnownMatcher | None:
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        loaded = pickle.loads(path.read_bytes())  # our own file, checked above
    except Exception:  # absent, unreadable or from another version: build it again
        return None
    return loaded if isinstance(loaded, KnownMatcher) else None


def _save_matcher(path: Path, matcher: KnownMatcher) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".known-")  # mode 0600
        with os.fdopen(handle, "wb") as out:
            pickle.dump(matcher, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
        for old in sorted(path.parent.glob("known-*.pickle"), key=_modified)[:-_CACHED_MATCHERS]:
            old.unlink(missing_ok=True)
    except OSError:  # a read-only home: no cache, the matcher still works
        return


_CACHED_MATCHERS = 4  # the most recent ones are kept: a lab switches between a few phones


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def judged_with(loaded: Loaded, geoip_dir: str = "", networks: str = "") -> dict[str, object]:
    """The files and limits a run is judged with, as its row keeps them (``reanalyze`` reads
    them back): absolute paths, so that they mean the same from any folder."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else None

    return {"policy": absolute(loaded.policy.path), "device": absolute(loaded.device.path),
            "networks": absolute(networks), "geoip_dir": absolute(geoip_dir),
            "max_body": loaded.limits.max_body_bytes, "analysis_budget_ms": loaded.limits.budget_ms}


def geodb_summary(assembled: Loaded) -> dict[str, object]:
    """What a run records about its destination data: databases and entity file."""
    return {
        "databases": [
            {key: db[key] for key in ("kind", "path", "database_type", "build_epoch")}
            for db in assembled.resolver.databases()
        ],
        "entities_version": assembled.entities.version,
    }


def stale_warnings(resolver: GeoResolver, max_age_days: int) -> list[str]:
    """One line per database built more than max_age_days ago."""
    from leakmap.geodb.inventory import describe
    from leakmap.geodb.inventory import stale_warnings as warnings_for
    from leakmap.geodb.lookup import DATA_DIR

    opened = [(str(db["kind"]), Path(str(db["path"]))) for db in resolver.databases()]
    return warnings_for(describe(opened, max_age_days, datetime.now(tz=UTC), DATA_DIR), max_age_days)
