"""``scenewatch run`` and ``scenewatch status``: scheduled batch jobs over scene archives."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from workflows.cli import options
from workflows.cli.options import report_errors

__all__ = ["run", "status"]

_EXIT_CODES = """\b
Exit codes:
  0  every scene and product succeeded (or was already up to date)
  1  an unexpected error (a bug: please report it) failed a scene, or the run itself failed
  2  the job file is invalid (the message names the key and line); nothing ran
  3  the run finished but some scenes or products failed (see `scenewatch status`)
  4  another run of this job holds the output folder's lock; nothing ran
  5  the output disk filled up: the run stopped; free space and run again to finish it"""


@click.command(epilog=_EXIT_CODES)
@click.argument("job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False))
@options.out(help="Output folder or s3://bucket/prefix [default: outputs.folder of the job, relative to the job "
                  "file].", required=False)
@options.state()
@click.option("--force", is_flag=True, help="Redo every scene, even those already done and unchanged.")
@click.option("--allow-factory", "allow_factory", is_flag=True,
              help="Run the Python model factory the job file names (model.factory). Only for job files you "
                   "trust: a factory is code. Factories that installed packages register as 'scenewatch.models' "
                   "entry points need no flag.")
@click.option("--scenes-in-flight", "scenes_in_flight", type=click.IntRange(1, 256), default=None, metavar="N",
              help="Scenes computed at once on the cluster, so no worker idles while a scene's COGs and polygons "
                   "are finished [default: the job's dask.scenes_in_flight, else twice the cluster's worker "
                   "threads, at most one per GiB of the workers' memory]. 1: one scene at a time.")
@options.stac_source_options("of the job's inputs (the job's asset, filters and remote settings still apply)")
@options.quiet(help="No progress bar or per-scene lines; only the summary.")
@report_errors
def run(job_file: str, out: str | None, state: str | None, force: bool, allow_factory: bool,
        scenes_in_flight: int | None, quiet: bool, **source: Any) -> None:
    """Run JOB.yaml over its archive: resumable, one bad scene never stops the others.

    Scenes already done with unchanged inputs, model and parameters (and intact outputs) are skipped; a
    killed run picks up where it stopped. Everything is recorded in OUT/scenewatch-manifest.sqlite and the
    products are published as a STAC catalog, OUT/catalog.json. OUT/report.html lists every item of the run
    with its status, each linking to its section (quicklook, area per class, error if it failed).

    \b
    Examples:
      scenewatch run workflows/jobs/naip_vegetation.yaml
      scenewatch run nightly.yaml --out /data/products/nightly
      scenewatch run nightly.yaml --force        # redo everything
      scenewatch run workflows/jobs/naip_vegetation.yaml --scenes-in-flight 2   # two scenes at once
      scenewatch run my_model_job.yaml --allow-factory   # the job names a Python model factory you trust
      scenewatch run nightly.yaml --out s3://my-bucket/nightly --state /var/lib/scenewatch/nightly
      scenewatch run workflows/jobs/naip_vegetation.yaml --stac examples/data/naip_items.json --out out/naip-stac
      scenewatch run nightly-s2.yaml --stac-search https://earth-search.aws.element84.com/v1 \
          --collections sentinel-2-l2a --bbox -63.5,-10.5,-62.5,-9.5 --datetime 2024-06-01/.. \
          --query 'eo:cloud_cover<20' --limit 50
    """
    from workflows.batch import ItemOutcome, run_job

    _quiet_dask()
    _stop_cleanly_on_sigterm()
    interactive = sys.stderr.isatty() and not quiet

    def report(outcome: ItemOutcome, index: int, total: int) -> None:
        if quiet or interactive:
            return
        line = f"[{index}/{total}] {outcome.kind} {outcome.item_id}: {outcome.status}"
        if outcome.status == "done":
            line += f" in {outcome.seconds:.1f} s"
        elif outcome.status == "failed":
            line += f" at {outcome.stage}: {outcome.message}"
        click.echo(line, err=True)

    from workflows.report import batch_sections, captured_warnings, safely, write_batch_report

    with captured_warnings() as warned:
        summary = run_job(job_file, out=out, force=force, progress=interactive, report=report,
                          allow_factory=allow_factory, scenes_in_flight=scenes_in_flight, state=state,
                          inputs=options.stac_source(**source))
    _print_summary(summary)
    built = safely(batch_sections, summary, warnings=warned)
    if built is not None:
        written = write_batch_report(summary.out_dir, f"scenewatch run: {summary.job}", *built)
        if written is not None and summary.remote is not None:
            from pipeline.storage import join_url, upload_file

            upload_file(written, join_url(summary.remote, written.name))
            click.echo(f"-> {join_url(summary.remote, written.name)}")
        elif written is not None:
            click.echo(f"-> {written}")
    sys.exit(summary.exit_code)


def _quiet_dask() -> None:
    """Importing distributed (done lazily, after `main` set the log levels) resets its loggers to INFO;
    a nightly log should hold our lines, not the cluster's start and stop chatter (-vv shows it)."""
    import logging

    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    logging.getLogger("distributed").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


def _stop_cleanly_on_sigterm() -> None:
    """systemd, Airflow and `timeout` stop a job with SIGTERM: unwind like Ctrl-C (temporary files removed,
    the cluster closed, the lock released) instead of dying mid-write; the scene in progress stays
    `running` in the manifest and is redone by the next run."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _print_summary(summary: Any) -> None:
    shown = [o for o in summary.outcomes if o.status != "skipped"]
    if shown:
        rows = [(o.item_id, o.kind, o.status, o.stage, f"{o.seconds:.1f}", o.message) for o in shown[:50]]
        _table(("item", "kind", "status", "stage", "seconds", "reason"), rows)
        if len(shown) > 50:
            click.echo(f"... and {len(shown) - 50} more (see `scenewatch status`)")
    click.echo(f"job {summary.job}: {summary.count('done')} done, {summary.count('skipped')} up to date, "
               f"{summary.count('failed')} failed -> {summary.out_dir}"
               + (f" (STAC: {summary.catalog.name})" if summary.catalog else "")
               + (f"; uploaded to {summary.remote}" if summary.remote else ""))


def _table(header: tuple[str, ...], rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [str(row[-1])]
        click.echo("  ".join(cells).rstrip())


@click.command()
@click.argument("job_file", metavar="JOB.yaml", type=click.Path(dir_okay=False))
@options.out(help="Output folder, if the job was run with --out.", required=False)
@options.state()
@click.option("--failed", "only_failed", is_flag=True, help="List failed items only.")
@options.stac_source_options("of the job's inputs, as the run was given them")
@report_errors
def status(job_file: str, out: str | None, state: str | None, only_failed: bool, **source: Any) -> None:
    """Show what JOB.yaml has done, failed and still pending, from its run manifest (runs nothing).

    \b
    Statuses:
      done         finished, outputs recorded with their checksums
      failed       with the stage and a one-line reason
      pending      never run
      changed      done, but the input file was modified since (the next run re-hashes it and
                   redoes the scene if its content differs)
      interrupted  a run stopped during it (the next run redoes it)
      running      a run holds the job's lock and is on it now

    \b
    Examples:
      scenewatch status workflows/jobs/naip_vegetation.yaml
      scenewatch status nightly.yaml --out /data/products/nightly --failed
      scenewatch status nightly.yaml --out s3://my-bucket/nightly --state /var/lib/scenewatch/nightly
      scenewatch status workflows/jobs/naip_vegetation.yaml --stac examples/data/naip_items.json --out out/naip-stac
    """
    from workflows.batch import read_status

    job, rows, last = read_status(job_file, out=out, state=state, inputs=options.stac_source(**source))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    shown = [r for r in rows if r.status == "failed"] if only_failed else rows
    if shown:
        _table(("item", "kind", "status", "stage", "finished (UTC)", "reason"),
               [(r.item_id, r.kind, r.status, r.stage, r.finished_at[:19], r.message) for r in shown])
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no scenes"
    click.echo(f"job {job.name}: {summary} ({job.out_dir})")
    if last is not None:
        ended = (f"finished {last.finished_at[:19]} with exit code {last.exit_code}" if last.finished_at
                 else "did not finish (killed, or still running)")
        click.echo(f"last run: #{last.run_id} started {last.started_at[:19]} UTC, {ended}")
