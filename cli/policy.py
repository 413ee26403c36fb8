"""``leakmap policy check`` and ``leakmap policy test``: a policy author's two tools.

``check`` reads policy files the way ``run`` and ``analyze`` do and prints
every problem as ``FILE:LINE:COL: what is wrong (what was expected)``.
``test`` runs a policy over one sample and prints what fired, so that a rule
can be tried in a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from leakmap.cli.main import cli, fail_cleanly
from leakmap.policies.model import Policy, check_policy


@cli.group("policy")
def policy_group() -> None:
    """Check a policy file, or try it on a sample.

    Example: leakmap policy check my-policy.yaml
    """


@policy_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quiet", is_flag=True, default=False, help="Print problems only.")
def check(files: tuple[Path, ...], quiet: bool) -> None:
    """Check policy files and the files they extend.

    Prints one line per problem, FILE:LINE:COL: what is wrong (what was
    expected), on standard output, and exits 1 if there is any. Warnings
    (a policy that can find nothing) go to standard error and do not fail.

    Example: leakmap policy check policies/*.yaml
    """
    failed = False
    for path in files:
        checked = check_policy(path)
        for warning in checked.warnings:
            click.echo(warning, err=True)
        for problem in dict.fromkeys(checked.problems):  # a shared parent's, once per file
            click.echo(problem)
        failed = failed or bool(checked.problems)
        if checked.policy is not None and not quiet:
            click.echo(f"{path}: ok ({summary(checked.policy)})", err=True)
    if failed:
        raise SystemExit(1)


def summary(policy: Policy) -> str:
    """``12 data types, 2 actions (block), watches CN; operators CN``."""
    verbs = sorted({rule.action for rule in policy.actions} - {"log"})
    acts = f"{len(policy.actions)} action rule(s)" + (f" ({', '.join(verbs)})" if verbs else "")
    return f"policy {policy.name!r}, sha256 {policy.sha256[:12]}, {len(policy.data_types)} data " \
           f"types, {acts}, {describe_watch(policy.watch)}"


def describe_watch(watch: dict[str, Any]) -> str:
    if "allow" in watch:
        allowed = watch["allow"]
        return ("watches all but servers in " + ",".join(allowed.get("countries", [])) +
                "; operators from " + ",".join(allowed.get("operator_countries", [])))
    servers, operators = watch.get("countries", []), watch.get("operator_countries", [])
    if not servers and not operators:
        return "watches nothing"
    return f"watches servers in {','.join(servers) or '-'}; operators from {','.join(operators) or '-'}"


# --------------------------------------------------------------------------
# test

@policy_group.command("test")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample", "sample", required=True, type=click.Path(allow_dash=True, path_type=Path),
              help="A mitmproxy flow file, a HAR file, a JSON file, or a raw body "
                   "(- reads standard input).")
@click.option("--device", default="", help="Device profile YAML (known values).")
@click.option("--entry", "entries", multiple=True, type=int,
              help="Only this entry of a HAR or flow file, from 1 (repeatable).")
@click.option("--content-type", default=None,
              help="Content type of a raw body (default: from the file name; JSON for .json).")
@click.option("--url", default="https://sample.invalid/",
              help="URL a raw body or JSON file is sent to; its host decides where it goes.")
@click.option("--server-ip", default=None, help="Server address a raw body is sent to "
              "(located like a flow's; default: none, so only the host counts).")
@click.option("--method", default="POST", show_default=True, help="Method of a raw body's request.")
@click.option("-H", "--header", "headers", multiple=True,
              help="Request header 'Name: value' of a raw body (repeatable).")
@click.option("--geoip-dir", default="", help="Folder with mmdb files instead of the embedded ones.")
@click.option("--networks", default="", help="YAML list of address-range overrides.")
@click.option("--show-values", is_flag=True, default=False,
              help="Print found values in clear instead of masked.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@fail_cleanly
def test(policy_file: Path, sample: Path, device: str, entries: tuple[int, ...],
         content_type: str | None, url: str, server_ip: str | None, method: str,
         headers: tuple[str, ...], geoip_dir: str, networks: str, show_values: bool,
         output_format: str) -> None:
    """Run a policy over one sample and print each finding with the rule that fired.

    For each flow: where it goes, the action the policy's rules give it, and
    each finding's field path, encoding, data type and detector
    (data_types.NAME.pattern, .keys or .known). Nothing is stored.

    Example: leakmap policy test my-policy.yaml --sample body.json --device phone.yaml
    """
    from leakmap.cli import samples

    pipeline, resolver = samples.build(policy_file, device, geoip_dir, networks, show_values)
    try:
        request = samples.RawRequest(content_type, url, server_ip, method, headers)
        exchanges = samples.read_sample(sample, request, set(entries))
        results = [pipeline.process(exchange) for exchange in exchanges]
    finally:
        resolver.close()
    if output_format == "json":
        click.echo(json.dumps([samples.as_data(record, show_values) for record in results],
                              indent=2, ensure_ascii=False))
        return
    click.echo(samples.as_text(results, show_values))
