"""The known-value matcher's start-up cache (``leakmap.wiring.cached_matcher``)."""

from __future__ import annotations

import pickle
import stat
from pathlib import Path

import pytest

from leakmap.core.device import load_device
from leakmap.core.known import KnownMatcher
from leakmap.policies.model import load_policy
from leakmap.wiring import cached_matcher

from conftest import SAMPLES

IMEI = "865312345678901"  # the sample profile's


def _found(matcher: KnownMatcher) -> set[str]:
    return {hit.data_type for hit in matcher.search(f"imei={IMEI}")}


def test_the_cache_is_private_and_gives_the_same_matcher(tmp_path: Path) -> None:
    policy, device = load_policy(), load_device(SAMPLES / "redmi-1s.yaml")
    built = cached_matcher(policy, device, tmp_path / "cache")
    [cached] = (tmp_path / "cache").glob("known-*.pickle")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    loaded = cached_matcher(policy, device, tmp_path / "cache")
    assert loaded is not built and loaded.words == built.words
    assert loaded.digests == built.digests
    assert loaded._digest_hit_lists == built._digest_hit_lists
    assert loaded._word_hits == built._word_hits
    assert _found(loaded) == _found(built) == {"imei"}


@pytest.mark.parametrize(("mode", "trusted"), [(0o600, True), (0o620, False), (0o602, False)])
def test_a_cache_file_others_could_write_is_not_loaded(tmp_path: Path, mode: int,
                                                        trusted: bool) -> None:
    policy, device = load_policy(), load_device(SAMPLES / "redmi-1s.yaml")
    cached_matcher(policy, device, tmp_path / "cache")
    [cached] = (tmp_path / "cache").glob("known-*.pickle")
    # a matcher that knows nothing, planted under the right name
    cached.write_bytes(pickle.dumps(KnownMatcher(policy.data_types.values(), load_device(None))))
    cached.chmod(mode)
    matcher = cached_matcher(policy, device, tmp_path / "cache")
    assert _found(matcher) == (set() if trusted else {"imei"})


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    policy, device = load_policy(), load_device(SAMPLES / "redmi-1s.yaml")
    cached_matcher(policy, device, tmp_path / "cache")
    [cached] = (tmp_path / "cache").glob("known-*.pickle")
    cached.write_bytes(b"\x80\x05 not a pickle")
    assert _found(cached_matcher(policy, device, tmp_path / "cache")) == {"imei"}
