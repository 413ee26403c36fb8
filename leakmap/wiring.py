"""Builds the analysis pipeline from settings.

The live addon and ``leakmap analyze`` both call :func:`build_pipeline`, so a
capture analysed offline goes through exactly what the proxy ran.  Every
configuration mistake comes out as :class:`ConfigError` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from leakmap.core.classify import Classifier
from leakmap.core.decode import Limits
from leakmap.core.destination import Locator, WatchRule
from leakmap.core.device import DeviceProfile, load_device
from leakmap.core.pipeline import Pipeline
from leakmap.core.yamlsource import ConfigError
from leakmap.geodb.entities import EntityIndex, build_index
from leakmap.geodb.lookup import GeoResolver, load_networks
from leakmap.policies.model import Policy, load_policy
from leakmap.store.db import default_db_url, hash_key_for


@dataclass
class Assembled:
    pipeline: Pipeline
    policy: Policy
    device: DeviceProfile
    resolver: GeoResolver
    entities: EntityIndex
    locator: Locator


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


def build_pipeline(
    policy: str = "",
    device: str = "",
    db: str = "",
    geoip_dir: str = "",
    networks: str = "",
    hash_key_file: str = "",
    store_raw: bool = False,
    max_body: int = Limits.max_body_bytes,
    analysis_budget_ms: int = Limits.budget_ms,
) -> Assembled:
    """Load policy, device, geodb and key; raise ConfigError on any mistake."""
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
    pipeline = Pipeline(Classifier(loaded_policy, profile, limits), locator, key, store_raw)
    return Assembled(pipeline, loaded_policy, profile, resolver, entities, locator)


def geodb_summary(assembled: Assembled) -> dict[str, object]:
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
