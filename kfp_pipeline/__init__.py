"""The ArcFace Kubeflow pipeline: the DAG that wires ``components/`` (dag), how it runs (local: kfp.local's
runners; cluster: a KFP server), the KServe InferenceService of a model version (inference_service), and the
command line ``pipeline.py`` runs (cli). The ML code the steps call is the ``arcface`` library (src/arcface)."""
