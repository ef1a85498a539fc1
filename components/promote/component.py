"""KFP component: write the exported model into the model store as its next version and make it current."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from components.common import LIGHT_IMAGE


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def promote_model(exported: Input[Model], evaluation: Input[Metrics], model_store: str, model_name: str,
                  keep_versions: int, run_id: str) -> int:
    """arcface.mlops.store.promote: copy ``exported`` into ``<model_store>/<model_name>/<next version>/`` atomically,
    move ``current`` to it, keep the newest ``keep_versions`` (never the current one).

    Args:
        exported: the export step's folder (formats and model card).
        evaluation: the evaluate step's Metrics artifact: this model's numbers and the champion's on the same
            pairs, recorded in the version's lineage; the champion it names must still be current.
        model_store: the store's folder (on a mounted volume). Empty: no store, nothing is promoted.
        model_name: the model's folder in the store.
        keep_versions: versions kept after promoting (0 keeps all).
        run_id: the pipeline run, recorded in the lineage; a failure of this step is recorded under it in the
            store's run log (arcface.mlops.notify.failures_logged), for the exit step.

    Returns:
        The new version; 0 when there is no store.
    """
    from arcface.mlops.notify import failures_logged
    from arcface.mlops.store import open_store, promote

    with failures_logged("promote-model", model_store=model_store, model_name=model_name, run_id=run_id):
        store = open_store(model_store, model_name)
        if store is None:
            print("promote: no model_store given; the exported model stays in this run's artifacts only")
            return 0
        version = promote(exported.path, evaluation.path, store, run_id=run_id, keep=keep_versions,
                          reason="passed the quality gate")
        print(f"promote: version {version} of {store.folder} is now current")
        return version
