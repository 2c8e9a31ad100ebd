"""``hub bench``: the benchmark of issues 8 and 13 from the command line (the code lives in ``bench/``).

The ``bench`` package is imported inside the command only: the hub itself never depends on it.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from hub.cli_support import reporting_errors

#: Options that ``--quick`` sets unless they are given on the command line.
_QUICK_OPTIONS = ("patients", "duration", "partitions", "skip_scaling")


@click.command()
@click.option("--patients", type=click.IntRange(2), default=500, show_default=True, help="Demo patients.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the demo generator.")
@click.option(
    "--duration",
    type=click.FloatRange(1),
    default=25.0,
    show_default=True,
    help="Seconds of fixed offered load in the latency phase.",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Inputs/s offered in the latency phase (default: half the measured throughput, the target's "
    "load; another rate's p99s are shown, not compared).",
)
@click.option("--partitions", type=click.IntRange(1), default=6, show_default=True, help="Topic partitions.")
@click.option(
    "--bootstrap",
    default=None,
    help="Use this Kafka broker instead of starting an embedded one on free ports.",
)
@click.option("--skip-scaling", is_flag=True, help="Skip the two-worker run.")
@click.option(
    "--state-patients",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Then a state of at least this many patients (copies of the throughput phase's state): "
    "worker peak RSS, rebuild and restart time, throughput with it in place. 0: no state phase.",
)
@click.option("--quick", is_flag=True, help="A tiny run (40 patients, 5 s of latency, no scaling).")
@click.option("--profile", is_flag=True, help="Run the single worker under cProfile; print its top 20.")
@click.option(
    "--profile-output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-worker.prof"),
    show_default=True,
    help="Where --profile writes the cProfile data.",
)
@click.option(
    "--sample",
    is_flag=True,
    help="Sample the single worker with py-spy in the throughput phase (slows it less than cProfile); "
    "print its CPU by stage.",
)
@click.option(
    "--sample-output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-worker-samples.txt"),
    show_default=True,
    help="Where --sample writes py-spy's collapsed stacks.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results.json"),
    show_default=True,
    help="Where to save the results as JSON.",
)
@click.pass_context
@reporting_errors
def bench(ctx: click.Context, /, **options: Any) -> None:
    """Measure throughput, latency and memory against raw Kafka on a real broker (3-4 minutes).

    Prints the figures, then the targets of issue 13 as a table (measure | target | measured | met?);
    progress goes to stderr. --state-patients adds the state phase (docs/PERFORMANCE.md). Ctrl-C stops
    every process the benchmark started, and the broker if it started one.
    """
    from bench.run import QUICK, BenchConfig, render_profile, render_table, run_bench  # noqa: PLC0415
    from bench.sampling import render as render_samples  # noqa: PLC0415

    profile_output: Path = options.pop("profile_output")
    sample_output: Path = options.pop("sample_output")
    if options["profile"] and options["sample"]:
        raise click.UsageError("--profile and --sample measure the same worker two ways: choose one")
    output: Path = options.pop("output")
    quick: bool = options.pop("quick")
    given = {
        **options,
        "profile": profile_output.resolve() if options["profile"] else None,
        "sample": sample_output.resolve() if options["sample"] else None,
    }
    base = QUICK if quick else BenchConfig()
    explicit = {
        name: value
        for name, value in given.items()
        if name not in _QUICK_OPTIONS or ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    config = replace(base, **explicit)
    command = shlex.join(["hub", "bench", *sys.argv[2:]]) if len(sys.argv) > 1 else "hub bench"
    try:
        result = run_bench(config, command=command)
    except KeyboardInterrupt:
        click.echo("interrupted: every process the benchmark started has been stopped", err=True)
        sys.exit(130)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(render_table(result))
    if result["profile"]:
        click.echo("")
        click.echo(render_profile(result["profile"]))
    if result["samples"]:
        click.echo("")
        click.echo(render_samples(result["samples"], result["samples"]["file"]))
    click.echo(f"\nresults: {output} (config: {json.dumps(asdict(config), default=str)})", err=True)
