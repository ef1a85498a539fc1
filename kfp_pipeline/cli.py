"""``pipeline.py``'s command line: compile, run (locally or in Docker), submit, schedule, models, serve-manifest.

Each command is a thin call into this package: the DAG (:mod:`kfp_pipeline.dag`), local runs
(:mod:`kfp_pipeline.local`), a KFP server (:mod:`kfp_pipeline.cluster`), the InferenceService
(:mod:`kfp_pipeline.inference_service`) and the model store (:mod:`arcface.mlops.store`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from arcface.mlops import images
from components.common import REPOSITORY
from kfp_pipeline.cluster import schedule, submit
from kfp_pipeline.dag import (
    PIPELINE_DESCRIPTION,
    PIPELINE_NAME,
    PIPELINE_PARAMETERS,
    DeployOptions,
    Toleration,
    coerce_parameter,
    compile_pipeline,
    parse_params,
)
from kfp_pipeline.local import DEFAULT_LOCAL_DATA, local_arguments, print_summary, run_local


def _add_deploy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster placement (compile-time)")
    g.add_argument("--gpu", metavar="RESOURCE", help="accelerator resource of the train step, e.g. nvidia.com/gpu "
                                                     "(also switches it to the GPU image)")
    g.add_argument("--gpu-count", type=int, default=1, help="accelerators for the train step (default 1)")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                   help="node label the train step must run on (repeatable)")
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="taint the train step tolerates, e.g. nvidia.com/gpu:NoSchedule (repeatable)")
    g.add_argument("--pvc", metavar="NAME", help="PersistentVolumeClaim holding the data, mounted in every step")
    g.add_argument("--pvc-mount", default="/data", metavar="PATH", help="where the PVC is mounted (default /data)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train on N pods: N>1 turns the train step into a launcher of a Kubeflow Training Operator "
                        "TFJob with N workers (MultiWorkerMirroredStrategy; needs --pvc). Default 1: one train pod")
    g.add_argument("--gpus-per-worker", type=int, default=0, metavar="G",
                   help="accelerators of each TFJob worker (resource --gpu, default nvidia.com/gpu; G>0 also "
                        "switches the workers to the GPU image). Default 0")
    g.add_argument("--tfjob-timeout", type=float, default=DeployOptions.tfjob_timeout_minutes, metavar="MINUTES",
                   help="the launcher deletes the TFJob and fails after this many minutes (default 3 days)")
    _add_image_options(p)


def _add_image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images (compile-time)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--image-digests", metavar="FILE",
                       help="name the images by the digests in FILE (repo/flavor@sha256:..., written by "
                            "docker/build.sh --push); FILE must be for this version and ARCFACE_IMAGE_REPOSITORY. "
                            f"Default: {images.DIGESTS_FILE_IN_CHECKOUT} in the checkout (or ${images.DIGESTS_ENV}) "
                            "when it exists and is for them, else the tags")
    which.add_argument("--no-image-digests", action="store_true",
                       help="name the images by their tags (<repository>/<flavor>:<version>) even if digests exist")


def deploy_options(args: argparse.Namespace) -> DeployOptions:
    selectors = []
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-selector {item!r}: expected KEY=VALUE")
        selectors.append((key, value))
    pins = images.load_pins(args.image_digests, use_digests=not args.no_image_digests, repo=REPOSITORY)
    return DeployOptions(gpu_type=args.gpu, gpu_count=args.gpu_count, node_selector=tuple(selectors),
                         tolerations=tuple(Toleration.parse(t) for t in args.toleration), pvc_name=args.pvc,
                         pvc_mount_path=args.pvc_mount, workers=args.workers,
                         gpus_per_worker=args.gpus_per_worker, tfjob_timeout_minutes=args.tfjob_timeout,
                         images=pins)


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (any TrainConfig flag, or " + ", ".join(PIPELINE_PARAMETERS)
                        + "); repeatable")


def _add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--token", help="bearer token (e.g. a service-account token)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    p.add_argument("--experiment", default="arcface", help="experiment name (created when missing)")
    p.add_argument("--pipeline-root", help="where artifacts go (default: the deployment's)")
    p.add_argument("--max_minutes", type=float, help="training time budget in minutes (the max_minutes flag)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py", description=PIPELINE_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="write the pipeline's IR YAML")
    p.add_argument("--output", default=f"{PIPELINE_NAME}.yaml")
    _add_deploy_options(p)

    p = sub.add_parser("run", help="run the whole pipeline on this machine")
    p.add_argument("--local", action="store_true",
                   help="run here with kfp.local (always the case; kept for the documented `run --local`)")
    p.add_argument("--docker", action="store_true",
                   help="run each step in its image with kfp.local's DockerRunner (images from docker/build.sh, "
                        "engine at DOCKER_HOST); the data folder is mounted read-only into the containers")
    p.add_argument("--config", help="YAML of TrainConfig keys (strict)")
    p.add_argument("--data", help=f"data root holding train/ and validation/ (default: {DEFAULT_LOCAL_DATA})")
    p.add_argument("--output", default="runs/local", help="pipeline root for the outputs (default runs/local)")
    p.add_argument("--no-preset", action="store_true",
                   help="start from the pipeline's defaults (ResNet50, 100 epochs) instead of the local preset")
    _add_params(p)

    p = sub.add_parser("submit", help="compile and start one run on a KFP deployment")
    _add_server(p)
    p.add_argument("--run-name")
    _add_params(p)
    _add_deploy_options(p)

    p = sub.add_parser("schedule", help="compile and create a recurring run (one at a time, no catch-up)")
    _add_server(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="six-field cron, seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    when.add_argument("--every", help="interval, e.g. 7d, 12h, 30m")
    p.add_argument("--name", default="arcface-retrain", help="recurring run name")
    p.add_argument("--update", action="store_true",
                   help="move the existing recurring run of this name to the newly compiled pipeline version")
    _add_params(p)
    _add_deploy_options(p)

    p = sub.add_parser("models", help="the model store: list its versions, show one, roll back")
    p.add_argument("action", choices=("list", "show", "rollback"))
    p.add_argument("--store", required=True, help="the model store folder (the model_store parameter)")
    p.add_argument("--model", default="arcface", help="the model's name in the store (default arcface)")
    p.add_argument("--version", type=int,
                   help="show: which version (default current); rollback: to which (default the one the current "
                        "replaced)")

    p = sub.add_parser("serve-manifest", help="write a KServe InferenceService serving a model version")
    p.add_argument("--model-uri", required=True, help="storage URI of the export or model-store version folder")
    p.add_argument("--name", default="arcface", help="InferenceService name (also the model name in its URLs)")
    p.add_argument("--version", help="model version, recorded as a label")
    p.add_argument("--output", required=True, help="the YAML file to write")
    _add_image_options(p)
    return parser


def models_command(args: argparse.Namespace) -> None:
    """``models list|show|rollback``: a thin command line over arcface.mlops.store."""
    import json

    from arcface.mlops.store import ModelStore

    store = ModelStore(args.store, args.model)
    if args.action == "list":
        rows = store.list()
        if not rows:
            print(f"{store.folder}: no versions")
        for row in rows:
            accuracy = row["verification_accuracy"]
            print(f"{'*' if row['current'] else ' '} {row['version']:>4}  {row['created']}  "
                  f"accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}  run {row['run_id'] or '-'}"
                  f"  replaced {row['replaced'] or '-'}")
    elif args.action == "show":
        version = args.version or store.current()
        if version is None:
            raise ValueError(f"{store.folder} has no current version; name one with --version")
        print(json.dumps({"path": store.version_dir(version), "current": version == store.current(),
                          **store.lineage(version).to_dict()}, indent=2))
    else:
        before = store.current()
        after = store.rollback(args.version)
        print(f"{store.folder}: current version {before} -> {after}")


def _server_arguments(args: argparse.Namespace) -> dict[str, Any]:
    arguments = parse_params(args.param)
    if args.max_minutes is not None:
        arguments["max_minutes"] = coerce_parameter("max_minutes", args.max_minutes)
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compile":
            path = compile_pipeline(args.output, deploy_options(args))
            print(f"wrote {path}")
        elif args.command == "run":
            arguments = local_arguments(config=args.config, data=args.data, params=args.param,
                                        preset=not args.no_preset)
            print("pipeline arguments: " + ", ".join(f"{k}={v!r}" for k, v in arguments.items()), flush=True)
            if arguments.get("n_classes") == 0:
                print("n_classes=0: as many identities as the data holds (the validate step says how many; "
                      "--param n_classes=N requires that many)", flush=True)
            print_summary(run_local(arguments, args.output, docker=args.docker, progress=sys.stdout))
        elif args.command == "serve-manifest":
            from kfp_pipeline.inference_service import write_manifest

            pins = images.load_pins(args.image_digests, use_digests=not args.no_image_digests, repo=REPOSITORY)
            print(f"image {pins.describe('cpu', images.cpu_image())}", file=sys.stderr)
            image = pins.reference("cpu") or images.cpu_image()
            print(f"wrote {write_manifest(args.output, args.model_uri, args.name, args.version, image=image)}")
        elif args.command == "submit":
            run, version = submit(args.host, _server_arguments(args), options=deploy_options(args),
                                  experiment=args.experiment, namespace=args.namespace, token=args.token,
                                  run_name=args.run_name, pipeline_root=args.pipeline_root)
            print(f"pipeline version {version.name} ({'uploaded' if version.uploaded else 'already there'})")
            print(f"submitted run {run.run_id}")
        elif args.command == "schedule":
            job, version, replaced = schedule(
                args.host, _server_arguments(args), cron=args.cron, every=args.every, options=deploy_options(args),
                experiment=args.experiment, namespace=args.namespace, token=args.token, name=args.name,
                pipeline_root=args.pipeline_root, update=args.update)
            print(f"pipeline version {version.name} ({'uploaded' if version.uploaded else 'already there'})")
            print(f"created recurring run {job.recurring_run_id}"
                  + (f", replacing {', '.join(replaced)}" if replaced else ""))
        else:
            models_command(args)
    except (ValueError, RuntimeError) as e:  # ConfigError and DataError are ValueErrors with the fix in them
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
