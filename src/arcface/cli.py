"""The ``arcface`` command: validate, train, evaluate, export, embed, compare, search, enroll, serve.

``python train.py --flag=value ...`` (the original command line) is ``arcface train --flag=value ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from arcface import __version__
from arcface import config as cfg
from arcface.artifacts import ModelLoadError
from arcface.choices import (
    ALIGN_CHOICES,
    ALIGN_METHODS,
    EMBEDDING_FORMATS,
    EXPORT_FORMATS,
    GALLERY_KINDS,
    NO_FACE_CHOICES,
    ON_MISSING,
    QUANTIZE,
)
from arcface.config import ConfigError
from arcface.data.validate import resolve_roots, run_validation
from arcface.mlops import images, serving_defaults
from arcface.mlops.tfjob import run_worker

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_SKIPPED = 3  # arcface.embedding.EXIT_SKIPPED (not imported: that module loads numpy)
NO_FACE_HELP = ("a photo in which the detector finds no usable face: skip (default) reports it (file, code, fix) "
                "and embeds the others; fail stops; whole uses the whole image as the crop")
ALIGN_HELP = ("auto (default): align photos as the model was trained (its card or metadata says); mtcnn: "
              "detect and align every photo; none: use the whole image")


def _train(args) -> int:
    from arcface.train import train

    config = cfg.from_args(args)
    result = train(config, args.manifest, model_store=args.model_store, model_name=args.model_name)
    return 0 if result.stopped in ("completed", "budget", "nothing-to-do") else 1


def _validate(args) -> int:
    train_root, validation_root = resolve_roots(args.train_data, args.validation_data)
    result = run_validation(train_root, validation_root, args.output_dir, n_classes=args.n_classes,
                            min_images=args.min_images, strict=args.strict)
    return 0 if result.ok or not args.strict else 1


def _evaluate(args) -> int:
    from arcface.evaluation.evaluate import evaluate

    metrics = evaluate(args.model, args.manifest, output_dir=args.output_dir, pairs_file=args.pairs,
                       pairs_root=args.pairs_root, flip_tta=not args.no_flip, on_missing=args.on_missing,
                       align=args.align)
    print(json.dumps(metrics["summary"], indent=2))
    print(f"metrics.json and report.html written to {args.output_dir}")
    return 0


def _align(args) -> int:
    from arcface.data.align import run_alignment

    run_alignment(args.manifest, args.output_dir, method=args.align, image_size=args.image_size,
                  cache_dir=args.cache, strict=args.strict, n_classes=args.n_classes)
    return 0


def _export(args) -> int:
    from arcface.export import export

    card = export(args.model, args.output_dir, formats=args.formats.split(","), quantize=args.quantize,
                  metrics_path=args.metrics)
    print(f"exported {', '.join(card['formats'])} to {args.output_dir}")
    return 0


def _embed(args) -> int:
    from arcface.embedding import embed_command

    return embed_command(args.model, args.images, args.output, args.format, args.align, args.on_no_face)


def _compare(args) -> int:
    from arcface.embedding import compare_command

    return compare_command(args.model, args.image_a, args.image_b, args.threshold, args.align, args.on_no_face)


def _search(args) -> int:
    if (args.gallery is None) == (args.index is None):
        raise ValueError("pass either --gallery people/ (embed the gallery now) or --index IDX (an index from "
                         "`arcface enroll`)")
    if args.index is not None:
        from arcface.mlops.gallery import search_index_command

        return search_index_command(args.model, args.index, args.probe, args.top_k)
    if args.model is None:
        raise ValueError("--gallery needs --model (the model to embed the gallery and the probe with)")
    from arcface.embedding import search_command

    return search_command(args.model, args.gallery, args.probe, args.top_k, args.align, args.on_no_face)


def _enroll(args) -> int:
    from arcface.mlops.gallery import enroll_command

    return enroll_command(args.model, args.gallery, args.index, args.kind, args.on_no_face)


def _import(args) -> int:
    from arcface.models.insightface import LICENSE_NOTE, import_onnx

    result = import_onnx(args.source, args.save_path, embedding_size=args.embedding_size,
                         calibration_images=args.calibration_images)
    print(f"imported {args.source} as {result.backbone} ({result.image_size}x{result.image_size} -> "
          f"{result.embedding_size}-d) into {result.save_path}: onnxruntime parity min cosine "
          f"{result.parity['min_cosine']:.6f}, max difference {result.parity['max_abs_diff']:.1e}")
    print(f"note: {LICENSE_NOTE}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer; pass 1 or more")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0; pass e.g. 10")
    return value


def _serve(args) -> int:
    from arcface.mlops.serving import serve

    serve(args.model, name=args.name, http_port=args.http_port, index_path=args.index,
          max_instances=args.max_instances, grpc_port=args.grpc_port, host=args.host, on_no_face=args.on_no_face,
          return_paths=args.return_paths, max_batch_size=args.max_batch_size,
          max_batch_wait_ms=args.max_batch_wait_ms, max_queue=args.max_queue, workers=args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcface", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"arcface {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order `arcface --help` lists the commands.
    _add_train(sub)
    _add_validate(sub)
    _add_align(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_embed(sub)
    _add_compare(sub)
    _add_search(sub)
    _add_enroll(sub)
    _add_import(sub)
    _add_serve(sub)
    _add_images(sub)
    _add_tfjob_worker(sub)
    return parser


def _add_images(sub) -> None:
    p = sub.add_parser("images", help="the container images' tags as NAME=value lines (docker/build.sh reads "
                                      "them); `images record ...` adds a pushed image's digest to a digests file")
    p.add_argument("arguments", nargs=argparse.REMAINDER, help="nothing, or: record --file F --flavor F "
                                                                 "--digest sha256:... --revision R")
    p.set_defaults(run=_images)


def _images(args) -> int:
    images.main(args.arguments)
    return 0


def _add_tfjob_worker(sub) -> None:
    p = sub.add_parser("tfjob-worker", help="train as one worker of a TFJob (the pods' command; save_path "
                                            "<run-dir>/model, written by the chief only)")
    p.add_argument("--config", required=True, help="the validated TrainConfig as JSON (the train step's dict)")
    p.add_argument("--manifest", required=True, help="the manifest folder (staged on the PVC)")
    p.add_argument("--run-dir", required=True, help="the run's folder on the PVC")
    p.set_defaults(run=_tfjob_worker)


def _tfjob_worker(args) -> int:
    return run_worker(args.config, args.manifest, args.run_dir)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an ArcFace model (the original train.py flags)")
    cfg.add_arguments(p)
    p.add_argument("--manifest", help="manifest.json from `arcface validate` (default: validate the folders now)")
    p.add_argument("--model_store", default="", help="the model store whose current version --init_from "
                                                     "champion starts from")
    p.add_argument("--model_name", default="arcface", help="the model's folder in --model_store")
    p.set_defaults(run=_train)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a train/validation face folder tree and write a manifest")
    p.add_argument("--train_data", default="./")
    p.add_argument("--validation_data", default="./")
    p.add_argument("--output_dir", required=True, help="where manifest.json, report.json and report.md go")
    p.add_argument("--n_classes", type=int, default=None)
    p.add_argument("--min_images", type=int, default=1)
    p.add_argument("--strict", action="store_true", help="fail on any problem instead of excluding the files")
    p.set_defaults(run=_validate)


def _add_align(sub) -> None:
    p = sub.add_parser("align", help="find each face and warp it onto the ArcFace 5-point template")
    p.add_argument("--manifest", required=True, help="the output folder of `arcface validate` (or its manifest)")
    p.add_argument("--output_dir", required=True, help="where the crops, manifest.json and the report go")
    p.add_argument("--align", choices=ALIGN_METHODS, default="mtcnn")
    p.add_argument("--image_size", type=int, default=112, help="side of the crops (the model's image_size)")
    p.add_argument("--cache", help="an earlier align output or cache folder: unchanged images are reused")
    p.add_argument("--n_classes", type=int, default=None)
    p.add_argument("--strict", action="store_true", help="fail when any image is excluded")
    p.set_defaults(run=_align)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="closed-set accuracy and face verification of a trained model")
    p.add_argument("--model", required=True, help="a training run's save_path")
    p.add_argument("--manifest", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--pairs", help="LFW-format pairs file (default: pairs generated from validation)")
    p.add_argument("--pairs_root", help="image root of the pairs file (default: its folder)")
    p.add_argument("--no_flip", action="store_true", help="no horizontal-flip test-time augmentation")
    p.add_argument("--on_missing", choices=ON_MISSING, default="error")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP + " (pairs files)")
    p.set_defaults(run=_evaluate)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="SavedModel, .keras, TFLite and ONNX, each checked for parity")
    p.add_argument("--model", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--formats", default=",".join(EXPORT_FORMATS))
    p.add_argument("--quantize", choices=QUANTIZE, default="none")
    p.add_argument("--metrics", help="metrics.json of the evaluation step, for the model card")
    p.set_defaults(run=_export)


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="write the embeddings of face images")
    p.add_argument("--model", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--format", choices=EMBEDDING_FORMATS, default=None, help="default: from --output's suffix")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP)
    p.add_argument("--on_no_face", choices=NO_FACE_CHOICES, default="skip",
                   help=NO_FACE_HELP + f"; exit status {EXIT_SKIPPED} when any was skipped")
    p.set_defaults(run=_embed)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="similarity of two faces, and same/different at the evaluated threshold")
    p.add_argument("--model", required=True)
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP)
    p.add_argument("--on_no_face", choices=[c for c in NO_FACE_CHOICES if c != "skip"], default="fail",
                   help="a photo in which the detector finds no usable face: fail (default), or whole: use the "
                        "whole image as the crop")
    p.set_defaults(run=_compare)


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="rank gallery identities (--gallery) or enrolled faces (--index) for a probe")
    p.add_argument("--model", help="required with --gallery; with --index, default: the model it was enrolled with")
    p.add_argument("--gallery", help="folder of <identity>/ image folders, embedded now")
    p.add_argument("--index", help="an index from `arcface enroll`")
    p.add_argument("probe")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP)
    p.add_argument("--on_no_face", choices=NO_FACE_CHOICES, default="skip",
                   help="--gallery's photos: " + NO_FACE_HELP + f"; exit status {EXIT_SKIPPED} when any was skipped. "
                        "The probe must show a face, unless whole")
    p.set_defaults(run=_search)


def _add_enroll(sub) -> None:
    p = sub.add_parser("enroll", help="embed a gallery into a persistent index (new or changed images only)")
    p.add_argument("--model", required=True)
    p.add_argument("--gallery", required=True, help="folder of <identity>/ image folders")
    p.add_argument("--index", required=True, help="the index folder (created, or updated)")
    p.add_argument("--kind", choices=GALLERY_KINDS, default="exact",
                   help="exact inner-product search; approximate for large galleries: an HNSW graph (fast "
                        "queries, slow to build), or IVF cells (builds a million faces in about a minute)")
    p.add_argument("--on_no_face", choices=NO_FACE_CHOICES, default="skip",
                   help=NO_FACE_HELP + f" (an enrolment again tries it again); exit status {EXIT_SKIPPED} when any "
                        "was skipped")
    p.set_defaults(run=_enroll)


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="an insightface recognition model (.onnx, an arcface_torch IResNet) as a "
                                      "model folder to serve or fine-tune")
    p.add_argument("source", help="the .onnx file (e.g. w600k_r50.onnx of insightface's buffalo_l pack)")
    p.add_argument("--save_path", required=True, help="the model folder to write (as a training run's save_path)")
    p.add_argument("--embedding_size", type=int, default=None,
                   help="fail unless the model's embedding has this size (default: whatever it has)")
    p.add_argument("--calibration_images", nargs="+", default=None,
                   help="aligned face crops (files or folders) for the BatchNorm statistics the export folded into "
                        "the convs: needed to fine-tune from the model, not to use it (default: those BNs start as "
                        "the identity)")
    p.set_defaults(run=_import)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve the model with KServe's model server (v1 and v2 protocols)")
    p.add_argument("--model", required=True, help="an export folder or a model-store version folder")
    p.add_argument("--name", default=serving_defaults.DEFAULT_NAME, help="the model name in the URLs")
    p.add_argument("--http_port", type=int, default=serving_defaults.DEFAULT_HTTP_PORT)
    p.add_argument("--grpc_port", type=int, default=None, help="also serve gRPC v2 on this port")
    p.add_argument("--index", help="a gallery index for search requests (`arcface enroll`)")
    p.add_argument("--max_instances", type=int, default=serving_defaults.DEFAULT_MAX_INSTANCES,
                   help="the most images one request may carry")
    p.add_argument("--host", default=serving_defaults.DEFAULT_HOST,
                   help="the address to listen on (default 127.0.0.1: this machine only, since the server has no "
                        "authentication); 0.0.0.0 only behind an authenticating ingress, as the InferenceService runs it")
    p.add_argument("--on_no_face", choices=NO_FACE_CHOICES, default="skip",
                   help="an instance without a usable face: skip (default) answers it with an error entry and the "
                        "others with results; fail makes the request a 400; whole uses the whole image")
    p.add_argument("--return_paths", action="store_true",
                   help="search answers carry the enrolled photo's path (default: identity and score only)")
    p.add_argument("--max_batch_size", type=_positive_int, default=serving_defaults.DEFAULT_MAX_BATCH_SIZE,
                   help="the most images one forward pass embeds for concurrent requests (default %(default)s)")
    p.add_argument("--max_batch_wait_ms", type=_non_negative_float,
                   default=serving_defaults.DEFAULT_MAX_BATCH_WAIT_MS,
                   help="how long a forward pass waits for more requests to fill it (default %(default)g; 0: never waits)")
    p.add_argument("--max_queue", type=_positive_int, default=serving_defaults.DEFAULT_MAX_QUEUE,
                   help="the most images admitted and not yet answered; past it a request gets 503 with "
                        "Retry-After (default %(default)s, at least --max_instances)")
    p.add_argument("--workers", type=_positive_int, default=serving_defaults.DEFAULT_WORKERS,
                   help="server processes, each with its own copy of the model and its own batches (KServe's "
                        "--workers; default %(default)s: measured on 2 cores, see benchmarks/README.md)")
    p.set_defaults(run=_serve)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ModelLoadError, ValueError, RuntimeError, FileNotFoundError) as e:
        # Our errors carry the problem and the fix; a traceback would only bury them.
        print(f"arcface {args.command}: error: {e}", file=sys.stderr)
        return 2


def train_main(argv: list[str] | None = None) -> int:
    """The original ``train.py`` entry point: the flags of ``arcface train``."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
