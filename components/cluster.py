"""Runs on a Kubeflow Pipelines deployment: one run now (``submit``) or a recurring one (``schedule``)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from components.dag import (
    PIPELINE_DESCRIPTION,
    PIPELINE_NAME,
    DeployOptions,
    check_arguments,
    compile_pipeline,
)

_EVERY = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_every(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``3600s`` or ``3600`` -> seconds."""
    match = _EVERY.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--every {text!r}: expected a positive count with an optional unit s, m, h, d or w "
                         "(e.g. 7d)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def check_cron(text: str) -> str:
    """KFP's cron has six fields, seconds first (``0 0 3 * * 0``: Sundays at 03:00)."""
    n = len(text.split())
    if n != 6:
        hint = f"; prefix a seconds field: '0 {text}'" if n == 5 else ""
        raise ValueError(f"--cron {text!r} has {n} fields; KFP expects 6 (second minute hour day month "
                         f"weekday){hint}")
    return text


def make_client(host: str, token: str | None = None, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")


def submit(host: str, arguments: Mapping[str, Any], *, options: DeployOptions | None = None,
           experiment: str = "arcface", namespace: str | None = None, token: str | None = None,
           run_name: str | None = None, pipeline_root: str | None = None):
    """Compile with ``options`` and start one run; return kfp's RunPipelineResult."""
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, f"{PIPELINE_NAME}.yaml"), options)
        return client.create_run_from_pipeline_package(
            package, arguments=dict(arguments), run_name=run_name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root)


def schedule(host: str, arguments: Mapping[str, Any], *, cron: str | None = None, every: str | None = None,
             options: DeployOptions | None = None, experiment: str = "arcface", namespace: str | None = None,
             token: str | None = None, name: str = "arcface-retrain", pipeline_root: str | None = None):
    """Create a recurring run: one at a time (max_concurrency=1), no backfill of missed runs (no_catchup)."""
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of --cron and --every")
    cron = check_cron(cron) if cron else None
    interval = parse_every(every) if every else None
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, f"{PIPELINE_NAME}.yaml"), options)
        return client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, description=PIPELINE_DESCRIPTION,
            cron_expression=cron, interval_second=interval, max_concurrency=1, no_catchup=True,
            params=dict(arguments), pipeline_package_path=package, pipeline_root=pipeline_root, enabled=True)


