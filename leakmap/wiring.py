"""Builds the analysis pipeline from settings.

The live addon and ``leakmap analyze`` both call :func:`build_pipeline`, so a
capture analysed offline goes through exactly what the proxy ran.  Every
configuration mistake comes out as :class:`ConfigError` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from leakmap.core.classify import Classifier
from leakmap.core.decode import Limits
from leakmap.core.device import DeviceProfile, load_device
from leakmap.core.pipeline import Pipeline
from leakmap.core.yamlsource import ConfigError
from leakmap.geodb.lookup import GeoResolver, load_networks
from leakmap.policies.model import Policy, load_policy
from leakmap.store.db import default_db_url, hash_key_for


@dataclass
class Assembled:
    pipeline: Pipeline
    policy: Policy
    device: DeviceProfile
    resolver: GeoResolver


def build_pipeline(
    policy: str = "",
    device: str = "",
    db: str = "",
    geoip_dir: str = "",
    networks: str = "",
    hash_key_file: str = "",
    store_raw: bool = False,
    max_body: int = Limits.max_body_bytes,
) -> Assembled:
    """Load policy, device, geodb and key; raise ConfigError on any mistake."""
    loaded_policy = load_policy(policy or None)
    profile = load_device(device or None)
    overrides = load_networks(networks) if networks else []
    resolver = GeoResolver(geoip_dir or None, overrides)  # GeoConfigError is a ConfigError
    try:
        key = hash_key_for(db or default_db_url(), hash_key_file or None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{hash_key_file or 'hash key'}: cannot read or create key ({e})") from e
    if max_body < 1:
        raise ConfigError(f"max_body: {max_body} is not a size (expected a number of bytes >= 1)")
    limits = Limits(max_body_bytes=max_body)
    pipeline = Pipeline(Classifier(loaded_policy, profile, limits), resolver, key, store_raw)
    return Assembled(pipeline, loaded_policy, profile, resolver)
