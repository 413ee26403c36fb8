"""``leakmap bundle RUN -o run.zip``: one file that lets another lab check a run.

The zip holds ``manifest.json`` (what the run was: name, times, tool version,
policy and profile hashes, captures and their SHA-256, geodb build dates,
steps), the policy and every file it extends, the networks file, the device
profile, the capture, the run's database rows (``rows.json``: masked
previews, never raw values unless asked) and the HTML report.

By default the profile is masked: its identifying values become comments
with masked previews, so re-analysis finds pattern and key matches but no
known values (and says so).  ``--include-raw`` keeps the profile whole:
``leakmap analyze run.zip`` elsewhere then gives the same findings.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import click
import yaml

import leakmap
from leakmap.cli.main import cli, fail_cleanly
from leakmap.cli.private import private_empty
from leakmap.core.digest import file_sha256
from leakmap.core.redact import mask

MANIFEST = "manifest.json"
_IDENTIFYING = ("imei", "imsi", "iccid", "phone_number", "email", "android_id", "advertising_id",
                "mac_address", "contacts", "sms", "location")


@cli.command("bundle")
@click.argument("run")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The zip file to write.")
@click.option("--include-raw", is_flag=True, default=False,
              help="Keep the device profile's values (and stored raw values) so the findings can be "
                   "reproduced elsewhere. The capture holds raw traffic either way.")
@fail_cleanly
def bundle(run: str, db: str, output: Path, include_raw: bool) -> None:
    """Pack a run to share: manifest, policy, profile, capture, database rows, HTML report.

    Example: leakmap bundle unit3-2014 --include-raw -o unit3-2014.zip
    """
    from leakmap.reports import html
    from leakmap.store import queries
    from leakmap.store.db import open_store

    engine = open_store(db or None)
    found = {row["run"]: row for row in queries.runs(engine)}
    if run not in found:
        raise click.ClickException(f"no run named {run!r} in {db or 'the default database'}")
    row = found[run]
    findings, flows = queries.findings(engine, run), queries.flows(engine, run)
    steps = queries.steps(engine, run)
    files = _files(row)
    if not include_raw:
        findings = [{k: v for k, v in f.items() if k != "raw_value"} for f in findings]
    report = html.render(findings, flows, [row], leakmap.__version__, f"leakmap evidence report: {run}")
    manifest = _manifest(row, steps, files, include_raw)
    private_empty(output)  # 0600 before anything is written into it
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
        archive.writestr("rows.json", json.dumps({"run": row, "steps": steps, "flows": flows,
                                                  "findings": findings}, indent=1, default=str))
        archive.writestr("report.html", report)
        for name, path in files.items():
            if name == "device.yaml" and not include_raw:
                archive.writestr(name, masked_profile(path))
            else:
                archive.write(path, name)
    click.echo(f"wrote {output}: {len(flows)} flows, {len(findings)} findings, "
               f"{'raw profile' if include_raw else 'masked profile'}", err=True)


def _files(row: dict[str, Any]) -> dict[str, Path]:
    """The run's files by their name in the bundle; each checked against what the run read."""
    from leakmap.cli.captures import run_captures
    from leakmap.policies.model import load_policy

    settings = row.get("settings") or {}
    files: dict[str, Path] = {}
    for index, (path, problem) in enumerate(run_captures(row)):
        if problem is not None:
            raise click.ClickException(problem)
        files[f"captures/{index}-{path.name}"] = path
    if not any(name.startswith("captures/") for name in files):
        raise click.ClickException(f"run {row['run']!r} kept no capture: nothing to re-analyse")
    if settings.get("policy"):
        policy = load_policy(settings["policy"])
        if policy.sha256 != row.get("policy_sha256"):
            raise click.ClickException(f"the run's policy {settings['policy']} has changed since the run")
        for path in policy.files:  # by their own names: extends: default.yaml still resolves
            name = f"policy/{path.name}"
            if name in files and files[name] != path:
                raise click.ClickException(f"two policy files of the extends chain are called "
                                           f"{path.name}: rename one to bundle the run")
            files[name] = path
    if settings.get("device"):
        device = Path(settings["device"])
        if not device.is_file() or file_sha256(device) != row.get("device_sha256"):
            raise click.ClickException(f"the run's device profile {device} is gone or has changed")
        files["device.yaml"] = device
    if settings.get("networks"):
        files["networks.yaml"] = Path(settings["networks"])
    return files


def _manifest(row: dict[str, Any], steps: list[dict[str, Any]], files: dict[str, Path],
              include_raw: bool) -> dict[str, Any]:
    return {
        "format": "leakmap-bundle/1",
        "run": row["run"], "command": row["command"], "mode": row.get("mode"),
        "started_at": row["started_at"], "ended_at": row["ended_at"], "status": row["status"],
        "tool_version": row["tool_version"], "bundled_by": leakmap.__version__,
        "policy": {"name": row.get("policy"), "sha256": row.get("policy_sha256"),
                   # the policy itself first, then what it extends
                   "files": [n for n in files if n.startswith("policy/")]},
        "device": {"name": row.get("device"), "sha256": row.get("device_sha256"),
                   "file": "device.yaml" if "device.yaml" in files else None,
                   "raw_values": include_raw},
        "captures": [{"file": name, "sha256": file_sha256(path), "recorded_as": str(path)}
                     for name, path in files.items() if name.startswith("captures/")],
        "networks": "networks.yaml" if "networks.yaml" in files else None,
        "geodb": row.get("geodb"), "settings": {k: v for k, v in (row.get("settings") or {}).items()
                                                if k in ("max_body", "analysis_budget_ms")},
        "steps": steps,
        "counts": {key: row.get(key) for key in ("flows", "flagged", "findings", "watched", "blocked",
                                                 "redacted")},
    }


def masked_profile(path: Path) -> str:
    """The profile without its identifying values: they stay as masked comments."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    kept = {k: v for k, v in data.items() if k not in _IDENTIFYING}
    lines = ["# Masked by leakmap bundle: the identifying values are not in this file, so",
             "# re-analysis cannot match known values (bundle with --include-raw to keep them)."]
    for key in _IDENTIFYING:
        if key in data:
            lines.append(f"# {key}: {_masked(data[key])}")
    body = yaml.safe_dump(kept, sort_keys=False, allow_unicode=True) if kept else ""
    return "\n".join(lines) + "\n" + body


def _masked(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} entries"
    if isinstance(value, dict):
        return "given"
    return mask(str(value))


# --------------------------------------------------------------------------
# Reading a bundle back (leakmap analyze run.zip)


def is_bundle(path: Path) -> bool:
    return zipfile.is_zipfile(path)


_MAX_UNPACKED = 8 * 2**30  # a bundle that inflates beyond this is refused, not unpacked


def open_bundle(path: Path, folder: Path) -> dict[str, Any]:
    """Unpack ``path`` into ``folder``; its manifest, every file it names checked to be in the
    bundle (never a path outside it) and the captures against their SHA-256."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise click.ClickException(f"{path}: a zip file, but not a leakmap bundle (no {MANIFEST})")
            if sum(member.file_size for member in archive.infolist()) > _MAX_UNPACKED:
                raise click.ClickException(f"{path}: unpacks to more than {_MAX_UNPACKED >> 30} GB")
            for member in archive.infolist():
                if not (folder / member.filename).resolve().is_relative_to(folder.resolve()):
                    raise click.ClickException(f"{path}: unsafe path {member.filename!r} in the bundle")
            archive.extractall(folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        named = [c["file"] for c in manifest["captures"]] + list(manifest["policy"]["files"])
        named += [n for n in (manifest["device"].get("file"), manifest.get("networks")) if n]
    except zipfile.BadZipFile as e:
        raise click.ClickException(f"{path}: not a zip file ({e})") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise click.ClickException(f"{path}: its {MANIFEST} is not a leakmap bundle's ({e!r})") from e
    for name in named:
        if not isinstance(name, str) or name not in names or name == MANIFEST:
            raise click.ClickException(f"{path}: its manifest names {name!r}, which is not in the bundle")
    if not manifest["captures"]:
        raise click.ClickException(f"{path}: the bundle holds no capture")
    for capture in manifest["captures"]:
        if file_sha256(folder / capture["file"]) != capture.get("sha256"):
            raise click.ClickException(f"{path}: {capture['file']} does not match its SHA-256")
    return manifest


def bundle_settings(manifest: dict[str, Any], folder: Path) -> dict[str, str]:
    """The policy, device and networks files a bundle carries, as analyze settings."""
    policies = manifest["policy"]["files"]
    device = manifest["device"].get("file")
    return {"policy": str(folder / policies[0]) if policies else "",
            "device": str(folder / device) if device else "",
            "networks": str(folder / manifest["networks"]) if manifest.get("networks") else ""}


def temporary_folder() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="leakmap-bundle-")
