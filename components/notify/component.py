"""KFP component: the pipeline's exit step (dsl.ExitHandler), run whether the steps succeeded or failed."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl

from components.common import LIGHT_IMAGE


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def report_run_end(status: dsl.PipelineTaskFinalStatus, model_store: str, model_name: str, notify_url: str,
                   run_id: str):
    """Record how the run ended in the store's run log and POST it to ``notify_url`` (arcface.mlops.notify).

    Args:
        status: KFP's final status of the steps under the exit handler (state, failed task, message).
        model_store: the store's folder; empty: no run log.
        model_name: the model's folder in the store.
        notify_url: a webhook receiving the record as JSON; empty: none. A webhook that is down or slow
            (bounded timeout) is reported in this step's log and never fails the step.
        run_id: the pipeline run.
    """
    import json

    from arcface.mlops.notify import report_run_end as report
    from arcface.mlops.notify import run_end_record

    record = run_end_record(state=status.state, run_id=run_id, task=status.pipeline_task_name,
                            error_code=status.error_code, error_message=status.error_message,
                            model_name=model_name)
    outcome = report(record, model_store=model_store, model_name=model_name, notify_url=notify_url)
    print(f"run ended: {status.state}; " + json.dumps({k: v for k, v in outcome.items() if k != "record"}))
