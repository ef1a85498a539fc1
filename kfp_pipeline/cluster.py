"""Runs on a Kubeflow Pipelines deployment: one run now (``submit``) or a recurring one (``schedule``).

Both upload the pipeline once (by name) and then add each newly compiled spec as a pipeline version named
``<package version>-<spec sha256>``; runs and recurring runs point at a version, so the UI shows which spec a run
used, and ``schedule --update`` moves a recurring run to the newest one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from kfp_pipeline.dag import (
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


def pipeline_version_name(package: str) -> str:
    """``<package version>-<sha256 of the compiled spec, 12 hex>``: the same spec always gets the same name."""
    from arcface import __version__

    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"{__version__}-{digest}"


def _display_name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


@dataclasses.dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str
    uploaded: bool  # False: this spec was on the server already


def upload_version(client, package: str, namespace: str | None = None) -> PipelineVersion:
    """The pipeline's version for ``package`` on the server: the pipeline is uploaded once (by name), then each
    new compiled spec is added as a version; a spec already there is reused, not uploaded again."""
    name = pipeline_version_name(package)
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION,
                                             namespace=namespace).pipeline_id
    found = client.list_pipeline_versions(pipeline_id, page_size=1, filter=_display_name_filter(name))
    if found.pipeline_versions:
        return PipelineVersion(pipeline_id, found.pipeline_versions[0].pipeline_version_id, name, False)
    version = client.upload_pipeline_version(package, pipeline_version_name=name, pipeline_id=pipeline_id,
                                             description=PIPELINE_DESCRIPTION)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, name, True)


def _compiled_version(client, options: DeployOptions | None, namespace: str | None) -> PipelineVersion:
    with tempfile.TemporaryDirectory() as tmp:
        return upload_version(client, compile_pipeline(os.path.join(tmp, f"{PIPELINE_NAME}.yaml"), options),
                              namespace)


def submit(host: str, arguments: Mapping[str, Any], *, options: DeployOptions | None = None,
           experiment: str = "arcface", namespace: str | None = None, token: str | None = None,
           run_name: str | None = None, pipeline_root: str | None = None):
    """Compile with ``options``, add it as a pipeline version (uploaded once), start one run of that version;
    return (the run, the PipelineVersion)."""
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    version = _compiled_version(client, options, namespace)
    run = client.run_pipeline(experiment_id, run_name or f"{PIPELINE_NAME} {version.name}",
                              params=dict(arguments), pipeline_id=version.pipeline_id,
                              version_id=version.version_id, pipeline_root=pipeline_root)
    return run, version


def _recurring_runs_named(client, experiment_id: str, name: str, namespace: str | None) -> list:
    found = client.list_recurring_runs(experiment_id=experiment_id, namespace=namespace, page_size=100,
                                       filter=_display_name_filter(name))
    return list(found.recurring_runs or [])


def schedule(host: str, arguments: Mapping[str, Any], *, cron: str | None = None, every: str | None = None,
             options: DeployOptions | None = None, experiment: str = "arcface", namespace: str | None = None,
             token: str | None = None, name: str = "arcface-retrain", pipeline_root: str | None = None,
             update: bool = False):
    """Create a recurring run of this pipeline version: one at a time (max_concurrency=1), no backfill of missed
    runs (no_catchup); return (the recurring run, the PipelineVersion, the ids of the replaced ones).

    ``update``: move the existing recurring run called ``name`` to this version. KFP's API cannot change a
    recurring run's pipeline version, so the new one is created first and the old one deleted after it: there is
    never a moment without a schedule. Without ``update`` an existing one of that name is an error (two
    schedules would train twice a week into the same store).
    """
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of --cron and --every")
    cron = check_cron(cron) if cron else None
    interval = parse_every(every) if every else None
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    existing = _recurring_runs_named(client, experiment_id, name, namespace)
    if existing and not update:
        raise ValueError(f"a recurring run named {name!r} exists already in experiment {experiment!r} "
                         f"({', '.join(r.recurring_run_id for r in existing)}); pass --update to move it to the new "
                         "pipeline version, or choose another --name")
    if update and not existing:
        raise ValueError(f"--update: there is no recurring run named {name!r} in experiment {experiment!r} to "
                         "update; create it without --update")
    version = _compiled_version(client, options, namespace)
    job = client.create_recurring_run(
        experiment_id=experiment_id, job_name=name, description=f"{PIPELINE_DESCRIPTION} ({version.name})",
        cron_expression=cron, interval_second=interval, max_concurrency=1, no_catchup=True,
        params=dict(arguments), pipeline_id=version.pipeline_id, version_id=version.version_id,
        pipeline_root=pipeline_root, enabled=True)
    for old in existing:
        client.delete_recurring_run(old.recurring_run_id)
    return job, version, [old.recurring_run_id for old in existing]
