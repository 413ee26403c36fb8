"""Every leakmap setting, once: a ``leakmap_*`` mitmproxy option and a CLI flag.

``leakmap_policy`` is the option; ``--policy`` is the flag of ``leakmap run``
and ``leakmap analyze``.  The addons declare the options from this table and
the CLI builds its flags from it, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str  # without the leakmap_ prefix
    type: type
    default: object
    help: str
    choices: tuple[str, ...] = ()  # the values a str setting may take, when limited

    @property
    def option(self) -> str:
        return f"leakmap_{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS = (
    Setting("policy", str, "", "Policy YAML file. Empty: the shipped policies/default.yaml."),
    Setting("device", str, "", "Device profile YAML with the known values of the phone under test."),
    Setting("db", str, "", "SQLAlchemy database URL. Empty: SQLite in $LEAKMAP_HOME/leakmap.db."),
    Setting("run_name", str, "", "Name of this run (unique in the database). Empty: command and UTC time."),
    Setting("geoip_dir", str, "", "Folder with MaxMind GeoLite2/GeoIP2 or DB-IP mmdb files to use "
            "instead of the embedded databases."),
    Setting("geodb_max_age", int, 180, "Days after which a geolocation database's build date "
            "draws a warning."),
    Setting("networks", str, "", "YAML list of address-range overrides: {cidr, country, asn, as_org, "
            "operator, operator_country}."),
    Setting("store_raw", bool, False, "Also store raw PII values (default: masked preview and keyed "
            "hash only)."),
    Setting("hash_key_file", str, "", "File holding the HMAC key for value hashes. Empty: one key per "
            "database under $LEAKMAP_HOME/keys."),
    Setting("max_body", int, 16 * 1024 * 1024, "Bytes of a body scanned; the rest is skipped and "
            "the flow marked truncated."),
    Setting("analysis_budget_ms", int, 50, "Milliseconds of analysis per flow (0: no limit); a flow "
            "that runs out is logged with what was found so far and a note saying so."),
    Setting("on_store_failure", str, "stop", "When the database cannot be written: 'stop' answers "
            "new requests with 502 until it is back, 'continue' lets traffic flow; both keep the "
            "records in a spill file and replay it when the store returns.", ("stop", "continue")),
    Setting("workers", str, "auto", "Analysis, storing and the capture's writing in processes of "
            "their own (1), or on threads of the proxy (0), or auto: processes when there are two "
            "or more cores (addons/analysis_worker.py, addons/capture_writer.py).",
            ("auto", "0", "1")),
    Setting("capture_dir", str, "", "Folder for the run's raw capture (a mitmproxy flow file, mode "
            "0600). Empty: a captures/ folder beside the SQLite database (a PostgreSQL database "
            "needs this set); 'none': no capture."),
    Setting("scenario", str, "", "Scenario YAML: the steps the tester performs, walked through on "
            "the console; each flow is tied to its step. Its policy and device are used unless "
            "--policy or --device say otherwise."),
    Setting("flush_ms", int, 500, "Milliseconds between database commits (a crash loses at most "
            "this much)."),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}


def declare(loader, names: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """Add the named settings as mitmproxy options."""
    for name in names:
        setting = BY_NAME[name]
        loader.add_option(setting.option, setting.type, setting.default, setting.help,
                          choices=setting.choices or None)
