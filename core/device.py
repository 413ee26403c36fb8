"""The device profile: the known values of the phone under test.

``device.yaml`` (all keys optional)::

    imei: "865312345678901"
    phone_number: "+91 98123 45678"
    region: IN                 # SIM country, for national-form numbers
    carrier: Airtel
    contacts: [{name: Asha, phone: "098765 43210"}]
    sms: ["See you at 6", {from: "+919811111111", body: "OTP 4411"}]
    location: {lat: 28.6139, lon: 77.2090}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from leakmap.core.yamlsource import ConfigError, Sourced, load

STRING_FIELDS = ("imei", "imsi", "iccid", "phone_number", "email", "android_id",
                 "advertising_id", "mac_address", "carrier")
ALL_FIELDS = (*STRING_FIELDS, "region", "contacts", "sms", "location", "name", "model", "android_version")


@dataclass(frozen=True)
class DeviceProfile:
    values: dict[str, str] = field(default_factory=dict)
    region: str | None = None
    contact_numbers: tuple[str, ...] = ()
    sms_senders: tuple[str, ...] = ()
    sms_bodies: tuple[str, ...] = ()
    location: tuple[float, float] | None = None
    sha256: str | None = None
    path: str | None = None
    label: str | None = None  # "name (model)" as the profile gives them, for reports

    def known(self, field_name: str) -> tuple[str, ...]:
        """The known values behind a policy's ``known.fields`` entry."""
        if field_name == "contacts":
            return self.contact_numbers
        if field_name == "sms.from":
            return self.sms_senders
        if field_name in ("sms", "sms.body"):
            return self.sms_bodies
        value = self.values.get(field_name)
        return (value,) if value else ()


def _text(source: Sourced, value: Any, where: tuple[str | int, ...]) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise source.error(where, f"wrong type: {type(value).__name__} (expected a string)")
    if not isinstance(value, str):  # an unquoted number: keep it as written
        value = source.as_written(where) or str(value)
    return str(value).strip()


def _item_keys(source: Sourced, item: dict[str, Any], where: tuple[str | int, ...],
               allowed: tuple[str, ...]) -> None:
    for key in item:
        if key not in allowed:
            raise source.error((*where, key), f"unknown key {key!r} (one of {', '.join(allowed)})",
                               at_key=True)


def _region(source: Sourced, data: dict[str, Any]) -> str | None:
    if "region" in data:
        region = _text(source, data["region"], ("region",)).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise source.error(("region",), f"unknown region {region!r} (expected ISO 3166 alpha-2)")
        return region
    own = data.get("phone_number")
    if isinstance(own, str) and own.strip().startswith("+"):
        try:
            found: str | None = phonenumbers.region_code_for_number(phonenumbers.parse(own))
        except phonenumbers.NumberParseException:
            return None
        return found if found and found != "ZZ" else None
    return None


def _contacts(source: Sourced, data: dict[str, Any]) -> tuple[str, ...]:
    items = data.get("contacts") or []
    if not isinstance(items, list):
        raise source.error(("contacts",), "wrong type (expected a list of {name, phone})")
    numbers = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            _item_keys(source, item, ("contacts", index), ("name", "phone"))
        phone = item.get("phone") if isinstance(item, dict) else item
        if phone is None:
            raise source.error(("contacts", index), "contact without phone (expected {name, phone})")
        numbers.append(_text(source, phone, ("contacts", index, "phone")))
    return tuple(n for n in numbers if n)


def _sms(source: Sourced, data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    items = data.get("sms") or []
    if not isinstance(items, list):
        raise source.error(("sms",), "wrong type (expected a list of texts or {from, body})")
    senders, bodies = [], []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            _item_keys(source, item, ("sms", index), ("from", "body", "date"))
            if item.get("from"):
                senders.append(_text(source, item["from"], ("sms", index, "from")))
            if item.get("body"):
                bodies.append(_text(source, item["body"], ("sms", index, "body")))
        else:
            bodies.append(_text(source, item, ("sms", index)))
    return tuple(senders), tuple(bodies)


def _location(source: Sourced, data: dict[str, Any]) -> tuple[float, float] | None:
    spot = data.get("location")
    if spot is None:
        return None
    try:
        lat, lon = float(spot["lat"]), float(spot["lon"])
    except (TypeError, KeyError, ValueError) as e:
        raise source.error(("location",), "wrong location (expected {lat: NUMBER, lon: NUMBER})") from e
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise source.error(("location",), "location out of range (expected lat -90..90, lon -180..180)")
    return lat, lon


def load_device(path: str | Path | None) -> DeviceProfile:
    """The profile at ``path``; an empty profile when None."""
    if path is None:
        return DeviceProfile()
    source = load(path, "device profile")
    data = source.data or {}
    if not isinstance(data, dict):
        raise source.error((), "wrong type (expected a mapping of device fields)")
    for key in data:
        if key not in ALL_FIELDS:
            raise source.error((key,), f"unknown key {key!r} (one of {', '.join(ALL_FIELDS)})",
                               at_key=True)
    values = {k: _text(source, data[k], (k,)) for k in STRING_FIELDS if data.get(k) is not None}
    senders, bodies = _sms(source, data)
    return DeviceProfile(
        values={k: v for k, v in values.items() if v},
        region=_region(source, data),
        contact_numbers=_contacts(source, data),
        sms_senders=senders,
        sms_bodies=bodies,
        location=_location(source, data),
        sha256=hashlib.sha256(source.raw).hexdigest(),
        path=str(path),
        label=_label(data),
    )


def _label(data: dict[str, Any]) -> str | None:
    """``Redmi 1S (HM 1SW)``: the profile's name and model, where it gives them."""
    name, model = (str(data[key]).strip() if data.get(key) is not None else "" for key in ("name", "model"))
    if name and model and model not in name:
        return f"{name} ({model})"
    return name or model or None


__all__ = ["ConfigError", "DeviceProfile", "load_device"]
