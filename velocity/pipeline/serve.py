"""`velocity serve`: run the pipeline flow on a schedule, from a deployment this process serves.

Schedules only fire on a real Prefect server (`prefect server start`), never on the ephemeral one a
one-off `velocity run` uses, so serving first checks that PREFECT_API_URL is set and answers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.error
import urllib.request
import zoneinfo
from pathlib import Path
from typing import Any

from velocity.pipeline.flows import PipelineError, add_pipeline_arguments, stage_order

DEFAULT_DEPLOYMENT = "scheduled"
HEALTH_TIMEOUT_SECONDS = 3.0

START_SERVER_HINT = (
    "Start one with `prefect server start --host 127.0.0.1` and point this shell at it with "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or `prefect config set PREFECT_API_URL=...`)."
)


class ServerUnreachable(RuntimeError):
    """No Prefect server answers at PREFECT_API_URL (or it is not set)."""


def check_server(api_url: str | None, timeout_seconds: float = HEALTH_TIMEOUT_SECONDS) -> str:
    """Return `api_url` if a Prefect server answers its /health there; raise ServerUnreachable if not."""
    if not api_url:
        raise ServerUnreachable(
            "PREFECT_API_URL is not set, so there is no Prefect server to hold the schedule "
            "(the ephemeral server of `velocity run` lives only as long as one run). " + START_SERVER_HINT
        )
    health_url = api_url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_seconds) as response:
            if response.status != 200:
                raise ServerUnreachable(f"Prefect server at {api_url} answered {response.status} on /health. {START_SERVER_HINT}")
    except (urllib.error.URLError, OSError, ValueError) as err:  # ValueError: not an http(s) URL
        reason = getattr(err, "reason", err)
        raise ServerUnreachable(f"no Prefect server answers at PREFECT_API_URL={api_url} ({reason}). {START_SERVER_HINT}") from None
    return api_url


def create_deployment(
    root: Path | str,
    name: str = DEFAULT_DEPLOYMENT,
    cron: str | None = None,
    interval_seconds: float | None = None,
    target: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 10.0,
    timezone: str | None = None,
) -> Any:
    """Create (or update) the pipeline's deployment with its schedule on the server; return it.

    `timezone` is an IANA name for the schedule (default: UTC). The returned RunnerDeployment can
    be handed to `prefect.serve` to execute its runs. Raises ValueError for a bad schedule.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    from velocity.pipeline.flows import pipeline_flow

    if (cron is None) == (interval_seconds is None):
        raise ValueError("give exactly one of cron or interval_seconds")
    if timezone is not None:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{timezone}' (expected an IANA name such as Europe/Paris)") from None
    if cron is not None:
        schedule = Cron(cron, timezone=timezone)  # an invalid cron string raises ValueError here
    else:
        if interval_seconds <= 0:
            raise ValueError(f"interval must be positive, got {interval_seconds} seconds")
        schedule = Interval(interval_seconds, timezone=timezone)
    deployment = pipeline_flow().to_deployment(
        name=name,
        schedule=schedule,
        parameters={
            "root": str(Path(root).resolve()),  # runs start in the runner's cwd, so pin the project
            "target": target,
            "retries": retries,
            "retry_delay_seconds": retry_delay_seconds,
        },
        description=f"DVC pipeline in {Path(root).resolve()}" + (f" up to '{target}'" if target else ""),
        tags=["velocity", "dvc"],
        # Load the flow by module path (the package is installed), not a path relative to the cwd.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.apply()
    return deployment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(parser)
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *" (03:00 every day)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS seconds")
    parser.add_argument("--timezone", help="IANA timezone of the schedule, e.g. Europe/Paris (default: UTC)")
    parser.add_argument("--name", default=DEFAULT_DEPLOYMENT, help=f"deployment name (default: {DEFAULT_DEPLOYMENT})")


def run(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    try:
        api_url = check_server(PREFECT_API_URL.value())
        stage_order(args.root, args.target)  # a bad root or target fails now, not at 03:00
        logging.getLogger("httpx").setLevel(logging.WARNING)
        deployment = create_deployment(
            args.root, args.name, cron=args.cron, interval_seconds=args.interval, target=args.target,
            retries=args.retries, retry_delay_seconds=args.retry_delay, timezone=args.timezone,
        )
    except (ServerUnreachable, PipelineError, ValueError) as err:
        print(f"velocity serve: {err}", file=sys.stderr)
        return 2
    from prefect import serve

    print(f"velocity serve: deployment 'velocity-pipeline/{args.name}' on {api_url}; Ctrl-C stops serving")
    serve(deployment)  # blocks, polling the server for scheduled runs and executing them here
    return 0
