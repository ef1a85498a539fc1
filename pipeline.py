"""The ArcFace Kubeflow pipeline and its commands.

The pipeline: validate -> align -> train (or a TFJob launcher with --workers N) -> evaluate -> quality gate ->
export -> promote, the last two only when the gate passes, and a final step that reports how the run ended.

    python pipeline.py compile [--output arcface_pipeline.yaml] [--gpu nvidia.com/gpu --gpu-count 1]
                               [--node-selector K=V] [--toleration KEY[=VALUE]:EFFECT] [--pvc NAME --pvc-mount /data]
                               [--workers N --gpus-per-worker G --tfjob-timeout MINUTES]   # a TFJob, needs --pvc
                               [--image-digests FILE | --no-image-digests]   # images by digest (build.sh --push)
    python pipeline.py run --local [--config YAML] [--data sample/orl] [--param k=v ...] [--output runs/local]
    python pipeline.py run --docker [same options]     # every step in its image (kfp.local.DockerRunner)
    python pipeline.py submit --host URL [--experiment NAME] [--namespace NS] [--token T] [--param k=v ...]
    python pipeline.py schedule --host URL (--cron '0 0 3 * * 0' | --every 7d) [--update] [--max_minutes 60]
                                [--param k=v ...]
    python pipeline.py models list|show|rollback --store DIR [--model NAME] [--version N]
    python pipeline.py serve-manifest --model-uri s3://bucket/models/arcface/3 [--name arcface] [--version 3]
                                      --output isvc.yaml    # a KServe InferenceService running `arcface serve`

The code is the ``kfp_pipeline`` package: the DAG and its parameters (``kfp_pipeline/dag.py``), local runs
(``local.py``), a KFP server (``cluster.py``), the InferenceService (``inference_service.py``) and this command
line (``cli.py``). The steps are ``components/``; the ML code they call is the ``arcface`` library.
"""

import sys

from kfp_pipeline.cli import main
from kfp_pipeline.dag import build_pipeline

#: The default pipeline (CPU, no Kubernetes placement), for ``kfp dsl compile --py pipeline.py``.
arcface_pipeline = build_pipeline()

if __name__ == "__main__":
    sys.exit(main())
