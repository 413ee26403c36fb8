"""The ``leakmap`` command: a thin layer over the library.

Domain errors (a bad policy, an unreachable database, an unreadable capture)
become one ``Error: ...`` line here, at the edge, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import SQLAlchemyError

import leakmap
from leakmap.addons.options import SETTINGS, Setting
from leakmap.cli import render
from leakmap.core.digest import file_sha256
from leakmap.core.yamlsource import ConfigError
from leakmap.policies.model import PolicyErrors
from leakmap.store.db import StoreError

if TYPE_CHECKING:
    from leakmap.cli.parallel import Analyse, Pool

ANALYSIS_SETTINGS = ("policy", "device", "db", "run_name", "geoip_dir", "geodb_max_age", "networks",
                     "store_raw", "hash_key_file", "max_body", "analysis_budget_ms")
NOT_PIPELINE = ("db", "run_name", "geodb_max_age")  # settings build_pipeline does not take


def _click_option(setting: Setting) -> Callable[[Any], Any]:
    if setting.type is bool:
        return click.option(setting.flag, setting.name, is_flag=True, default=False,
                            help=setting.help)
    kind = click.Choice(setting.choices) if setting.choices else setting.type
    return click.option(setting.flag, setting.name, type=kind, default=setting.default,
                        show_default=bool(setting.default), help=setting.help)


def settings_options(names: tuple[str, ...] | None = None,
                     defaults: dict[str, tuple[object, str]] | None = None) -> Callable[[Any], Any]:
    """Add a CLI flag for each leakmap setting (all of them by default).

    ``defaults`` gives a command its own default and help for a setting.
    """
    chosen = [s for s in SETTINGS if names is None or s.name in names]
    for name, (default, help_text) in (defaults or {}).items():
        chosen = [replace(s, default=default, help=help_text) if s.name == name else s
                  for s in chosen]

    def decorate(function: Any) -> Any:
        for setting in reversed(chosen):
            function = _click_option(setting)(function)
        return function

    return decorate


class ManyErrors(click.ClickException):
    """Several problems, each printed as ``Error: FILE:LINE:COL: ...``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def show(self, file: Any = None) -> None:
        for problem in self.problems:
            click.echo(f"Error: {problem}", err=True)


def fail_cleanly(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn leakmap's own errors into one ``Error: ...`` line and exit status 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except PolicyErrors as e:  # every problem, each on its own "Error: " line
            raise ManyErrors(e.problems) from e
        except (ConfigError, StoreError, ValueError, OSError) as e:
            raise click.ClickException(str(e)) from e
        except SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise click.ClickException(f"database refused the data: {reason}") from e

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(leakmap.__version__, prog_name="leakmap")
def cli() -> None:
    """leakmap: what a phone sends out, and where it goes.

    Example: leakmap analyze samples/redmi-2014.har --device samples/redmi-1s.yaml
    """


# --------------------------------------------------------------------------
# run


def addon_script_path() -> Path:
    from leakmap.addons import script

    return Path(script.__file__).parent / "leakmap_addons.py"


@cli.command("addon-path")
def addon_path() -> None:
    """Print the path of the mitmproxy script that loads the leakmap addons.

    Example: mitmdump -s "$(leakmap addon-path)" --set leakmap_db=sqlite:///lab.db
    """
    click.echo(str(addon_script_path()))


def mitmdump_arguments(settings: dict[str, Any], mode: tuple[str, ...],
                       listen_port: int | None, extra: tuple[str, ...]) -> list[str]:
    """The mitmdump command line that ``leakmap run`` stands for."""
    arguments = ["-s", str(addon_script_path())]
    for setting in SETTINGS:
        value = settings.get(setting.name)
        if value is not None and value != setting.default:
            text = str(value).lower() if setting.type is bool else str(value)
            arguments += ["--set", f"{setting.option}={text}"]
    for item in mode:
        arguments += ["--mode", item]
    if listen_port is not None:
        arguments += ["--listen-port", str(listen_port)]
    return arguments + list(extra)


@cli.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.option("--mode", "mode", multiple=True,
              help="mitmproxy mode: regular, transparent, wireguard, local, socks5, "
                   "reverse:URL, upstream:URL ... (repeatable).")
@click.option("--listen-port", type=int, default=None, help="Port the proxy listens on.")
@settings_options()
@click.argument("mitmproxy_args", nargs=-1, type=click.UNPROCESSED)
@fail_cleanly
def run(mode: tuple[str, ...], listen_port: int | None, mitmproxy_args: tuple[str, ...],
        **settings: Any) -> None:
    """Start mitmproxy (mitmdump) with the leakmap addons loaded.

    Other mitmproxy options pass through unchanged, e.g. --set block_global=false.

    Example: leakmap run --mode wireguard --device phone.yaml --run-name unit3-boot
    """
    from mitmproxy.tools.main import mitmdump

    from leakmap.addons.capture import capture_folder
    from leakmap.addons.recorder import default_run_name
    from leakmap.store.db import open_store
    from leakmap.wiring import build_pipeline

    if settings["scenario"]:  # its policy and device, unless the flags name others
        from leakmap.core.scenario import load_scenario

        scenario = load_scenario(settings["scenario"])
        settings["scenario"] = str(scenario.path)
        settings["policy"] = settings["policy"] or scenario.policy
        settings["device"] = settings["device"] or scenario.device
        settings["run_name"] = settings["run_name"] or default_run_name(scenario.name)
    settings["run_name"] = settings["run_name"] or default_run_name("run")
    capture_folder(settings["capture_dir"], settings["db"])  # a PostgreSQL URL needs a folder
    _check_settings(settings, build_pipeline, open_store)
    arguments = mitmdump_arguments(settings, mode, listen_port, mitmproxy_args)
    exit_without_finalizing(mitmdump(arguments) or 0)


def exit_without_finalizing(code: int) -> None:
    """End the process once mitmproxy has stopped, without finalizing the interpreter.

    By then leakmap's ``done`` hooks have closed the run and written the capture.  A
    thread of mitmproxy's native part (its DNS, WireGuard and local modes) can still be
    running while the interpreter finalizes, and under load the process then died of a
    segmentation fault after all was written (``Garbage-collecting`` on a thread without a
    Python frame: tests/test_live_protocols.py about 1 run in 20 on a busy machine, at
    this commit and the ones before).  So the logs and streams are flushed, and the
    process ends here.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to tell
            stream.flush()
    os._exit(code)


def _check_settings(settings: dict[str, Any], build: Callable[..., Any],
                    open_store: Callable[..., Any]) -> None:
    """Fail before the proxy starts, with one line, on a bad policy, profile or database."""
    assembled = build(**{k: settings[k] for k in ANALYSIS_SETTINGS if k not in NOT_PIPELINE},
                      db=settings["db"])
    assembled.resolver.close()
    open_store(settings["db"] or None).dispose()


# --------------------------------------------------------------------------
# analyze


def _worker_choice(_ctx: Any, _param: Any, value: str) -> str:
    if value != "auto" and not (value.isdigit() and int(value) <= MAX_WORKERS):
        raise click.BadParameter(f"{value!r} is not auto or a number of workers from 0 to {MAX_WORKERS}")
    return value


MAX_WORKERS = 16  # --workers: more than there are cores only costs memory


@cli.command("analyze")
@click.argument("captures", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@settings_options(ANALYSIS_SETTINGS, defaults={"analysis_budget_ms": (
    0, "Milliseconds of analysis per flow; 0 (the default offline): no time limit, so that the "
       "same capture always gives the same result. The byte caps still apply.")})
@click.option("--workers", default="auto", show_default=True, callback=_worker_choice,
              help="0: read and classify in this process. N: parse and classify in N worker "
                   "processes while this one writes (each uses a core and takes a few seconds to "
                   "start). auto: one per core, at most 2, when the machine has 2 or more cores "
                   "and the captures total 8 MB or more. The results are the same either way.")
@fail_cleanly
def analyze(captures: tuple[Path, ...], workers: str, **settings: Any) -> None:
    """Run the live pipeline over saved captures (mitmproxy flow files or HAR 1.2).

    Same capture, same policy, same profile: same database contents.

    Example: leakmap analyze capture.flow --device phone.yaml --run-name replay-1
    """
    bundles = [path for path in captures if path.suffix.lower() == ".zip"]
    if bundles:
        _analyze_bundle(captures, bundles, workers, settings)
        return
    analyze_captures(captures, workers, settings)


def _analyze_bundle(captures: tuple[Path, ...], bundles: list[Path], workers: str,
                    settings: dict[str, Any]) -> None:
    """A bundle (``leakmap bundle``) analysed again: its capture with its policy, profile and
    networks unless the flags name others; its steps copied to the new run."""
    from leakmap.addons.recorder import default_run_name
    from leakmap.cli import bundle as bundles_module
    from leakmap.store import queries
    from leakmap.store.db import insert_steps, open_store

    if len(captures) != 1:
        raise click.ClickException("analyse a bundle on its own (one .zip, no other captures)")
    with bundles_module.temporary_folder() as folder:
        manifest = bundles_module.open_bundle(bundles[0], Path(folder))
        for key, value in bundles_module.bundle_settings(manifest, Path(folder)).items():
            settings[key] = settings[key] or value
        if not manifest["device"].get("raw_values") and settings["device"].startswith(folder):
            click.echo("Note: the bundle's device profile is masked: known-value matching was not "
                       "possible; pattern and key findings only (bundle with --include-raw)", err=True)
        settings["run_name"] = settings["run_name"] or default_run_name(f"bundle-{manifest['run']}")
        files = tuple(Path(folder) / c["file"] for c in manifest["captures"])
        analyze_captures(files, workers, settings, mode=f"analysis of bundle {manifest['run']}")
        engine = open_store(settings["db"] or None)
        new_id = queries.run_id(engine, settings["run_name"])
        if new_id is not None and manifest.get("steps"):
            insert_steps(engine, new_id, manifest["steps"])


def analyze_captures(captures: tuple[Path, ...], workers: str, settings: dict[str, Any],
                     mode: str = "offline") -> None:
    """A new run from ``captures`` with ``settings`` (the ``analyze`` flags), in worker
    processes when ``workers`` says so."""
    from leakmap.cli import parallel

    pipeline_settings = {k: v for k, v in settings.items() if k not in NOT_PIPELINE or k == "db"}
    count = parallel.worker_count(workers, captures)
    if not count:
        _analyze(captures, settings, pipeline_settings, None, mode)
        return
    with parallel.worker_pool(pipeline_settings, count) as pool:  # they start building at once
        _analyze(captures, settings, pipeline_settings, pool, mode)


def _analyze(captures: tuple[Path, ...], settings: dict[str, Any],
             pipeline_settings: dict[str, Any], pool: Pool | None, mode: str) -> None:
    """``analyze``, in ``pool``'s workers or else in this process."""
    from leakmap.addons.recorder import default_run_name
    from leakmap.cli.parallel import in_process
    from leakmap.store.db import finish_run, open_store, start_run
    from leakmap.wiring import (
        Assembled,
        build_pipeline,
        geodb_summary,
        judged_with,
        load_settings,
        stale_warnings,
    )

    # a bad setting fails here, in one line; a worker builds its own classifier
    assembled = (build_pipeline(**pipeline_settings) if pool is None
                 else load_settings(**{k: v for k, v in pipeline_settings.items()
                                       if k != "store_raw"}))
    for warning in stale_warnings(assembled.resolver, settings["geodb_max_age"]):
        click.echo(f"Warning: {warning}", err=True)
    engine = open_store(settings["db"] or None)
    name = settings["run_name"] or default_run_name("analyze")
    run_id = start_run(
        engine, name, "analyze", leakmap.__version__,
        policy_name=assembled.policy.name, policy_sha256=assembled.policy.sha256,
        device_sha256=assembled.device.sha256, device=assembled.device.label, mode=mode,
        captures=[{"path": str(p), "sha256": file_sha256(p)} for p in captures],
        geodb=geodb_summary(assembled),
        settings=judged_with(assembled, settings["geoip_dir"], settings["networks"]),
    )
    if pool is None:
        assert isinstance(assembled, Assembled)
        analyse = in_process(assembled.pipeline)
    else:
        analyse = pool.analyser(assembled.locator, assembled.policy.actions)
    stored, problems = _analyze_captures(analyse, engine, run_id, captures)
    finish_run(engine, run_id, ("incomplete" if stored.flows else "failed") if problems
               else "completed")
    if stored.flows or not problems:
        click.echo(f"run {name}: {stored.flows} flows from {len(captures)} capture(s), "
                   f"{stored.findings} findings", err=True)
    if problems:  # what could be read is stored; the run says it is not whole
        raise click.ClickException("; ".join(problems))


@dataclass
class _Stored:
    flows: int = 0
    findings: int = 0


_BATCH_FIELDS = 200_000  # header fields a batch of records may hold, besides 500 records


def _fields(record: Any) -> int:
    """The header fields ``record`` holds (a crafted flow may have 300,000 of them), and one
    more for each 100 characters of its URL and path (a crafted URL may have a million)."""
    exchange = record.exchange
    return (len(exchange.request_headers) + len(exchange.response_headers)
            + len(exchange.request_trailers)
            + (len(exchange.url or "") + len(exchange.path or "")) // 100)


def _carry_findings(record: Any, earlier: dict[int, list[Any]]) -> None:
    """A flow whose id came before in the run is stored as its last state (the store keeps
    the last record of an id: a flow saved again when it ended is one flow), with the
    findings of its earlier records that the last lacks, and a note: two different flows
    given one id (a crafted capture) must not hide the first one's leak."""
    key = hash(record.exchange.flow_id)
    before = earlier.get(key)
    if before:
        have = {(f.field, f.data_type, f.value_hash) for f in record.findings}
        carried = [f for f in before if (f.field, f.data_type, f.value_hash) not in have]
        if carried:
            record.findings = [*record.findings, *carried]
            note = (f"flow id came before in the run: stored as its last record, with "
                    f"{len(carried)} finding(s) of the earlier one")
            record.analysis_error = (f"{record.analysis_error}; {note}" if record.analysis_error
                                     else note)
    if record.findings:
        if len(earlier) >= _CARRIED_FLOWS:
            earlier.clear()
        earlier[key] = list(record.findings)


_CARRIED_FLOWS = 200_000  # flows whose findings are remembered for a repeat of their id


def _analyze_captures(analyse: Analyse, engine: Any, run_id: int,
                      captures: tuple[Path, ...]) -> tuple[_Stored, list[str]]:
    """Analyse and store every readable flow; the captures that broke off, named.

    ``analyse`` turns one capture into records, in order, and raises a
    reading error only after the records of the flows before it.
    """
    from leakmap.cli.progress import Progress
    from leakmap.store.db import finish_run, write_records

    stored, problems = _Stored(), []
    progress = Progress(len(captures))  # on a terminal only
    earlier: dict[int, list[Any]] = {}  # hash of a flow id -> its findings so far

    def write(batch: list[Any]) -> None:
        found = sum(len(r.findings) for r in batch)
        stored.flows += write_records(engine, run_id, batch)
        stored.findings += found
        progress.add(len(batch), found)
        batch.clear()

    try:
        for capture in captures:
            batch: list[Any] = []
            read = fields = 0
            try:
                for record in analyse(capture):
                    _carry_findings(record, earlier)
                    batch.append(record)
                    read += 1
                    fields += _fields(record)
                    if len(batch) >= 500 or fields >= _BATCH_FIELDS:
                        write(batch)
                        fields = 0
            except ValueError as e:  # a capture cut short: keep the flows before the cut
                problems.append(f"{e} (the {read} flows before the damage are stored)"
                                if read else str(e))
            write(batch)
            progress.capture_done()
    except BaseException:
        finish_run(engine, run_id, "failed")
        raise
    finally:
        progress.close()
    return stored, problems


# --------------------------------------------------------------------------
# report


def _country_codes(_ctx: Any, _param: Any, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if len(value) != 2 or not value.isalpha():
            raise click.BadParameter(f"{value!r} is not an ISO 3166 alpha-2 code such as CN")
    return tuple(value.upper() for value in values)


@cli.command("report")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("--run", "run_name", default=None, help="Only this run.")
@click.option("--country", "countries", multiple=True, callback=_country_codes,
              help="Only flows to this country (ISO alpha-2; repeatable).")
@click.option("--watched", is_flag=True, default=False,
              help="Only flows to watched destinations (the policy's watch: list).")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv", "html"]),
              default="table", show_default=True,
              help="html: one self-contained evidence report (charts, sortable evidence table) "
                   "that opens offline.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@fail_cleanly
def report(db: str, run_name: str | None, countries: tuple[str, ...], watched: bool,
           output_format: str, output: Path | None) -> None:
    """Findings and flows for review.

    Example: leakmap report --run replay-1 --watched --format json

    Example: leakmap report --run replay-1 --format html -o report.html
    """
    from leakmap.cli.progress import Stages
    from leakmap.store import queries
    from leakmap.store.db import open_store

    engine = open_store(db or None)
    if run_name is not None and not queries.run_exists(engine, run_name):
        raise click.ClickException(f"no run named {run_name!r} in {db or 'the default database'}")
    stage = Stages()  # on a terminal only: a big database takes a while
    stage.show("reading findings")
    found = queries.findings(engine, run_name, countries, watched)
    stage.show(f"reading flows ({len(found):,} findings read)")
    logged = queries.flows(engine, run_name, countries, watched)
    stage.show(f"writing the {output_format} report ({len(found):,} findings, {len(logged):,} flows)")
    if output_format == "html":
        from leakmap.reports import html

        covered = [r for r in queries.runs(engine) if run_name is None or r["run"] == run_name]
        title = f"leakmap evidence report: {run_name or 'all runs'}"
        text = html.render(found, logged, covered, leakmap.__version__, title)
    else:
        text = render.FORMATS[output_format](found, logged)
    stage.close()
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        output.write_text(text, encoding="utf-8")


@cli.command("runs")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@fail_cleanly
def runs(db: str, output_format: str) -> None:
    """List the runs in a database, with their flows, findings, watched, blocked and
    redacted flows.

    Example: leakmap runs --db sqlite:///lab.db
    """
    import json

    from leakmap.store import queries
    from leakmap.store.db import mark_abandoned_runs, open_store

    engine = open_store(db or None)
    mark_abandoned_runs(engine)
    found = queries.runs(engine)
    click.echo(json.dumps(found, indent=2) if output_format == "json" else render.runs_table(found))


def main() -> None:
    cli(prog_name="leakmap")


# commands defined in their own modules register themselves on ``cli``
from leakmap.cli import bundle, device, diff, export, geo, policy, reanalyze, setup, steps  # noqa: E402, F401
