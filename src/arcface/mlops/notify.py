"""How a pipeline run ended: one record in the model store's run log, and the same JSON posted to a webhook.

The exit step of the pipeline (``dsl.ExitHandler``) calls :func:`report_run_end` with what KFP tells it
(``dsl.PipelineTaskFinalStatus``). That status does not name the failing step everywhere (kfp.local and some
cluster versions name only the exit handler's group), so every step runs inside :func:`failures_logged`, which
writes the step's name and its error into the store's run log; the exit step reads it back for its record.
Neither a missing store nor an unreachable webhook makes it fail: the run's own status is the body's, and a
notification problem must never turn a finished run into a failed one or hide which step failed. Only the
standard library is used, so the light image runs it.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from arcface.mlops.store import open_store

#: Seconds for the whole webhook request (connect and answer); a hung endpoint never holds the run.
WEBHOOK_TIMEOUT_SECONDS = 10.0
RUN_LOG_KIND = "run_end"
STEP_FAILED_KIND = "step_failed"
#: Characters of a step's error kept in the run log (a traceback's last line is what a reader needs).
ERROR_CHARS = 2000


def post_json(url: str, body: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> dict[str, Any]:
    """POST ``body`` as JSON; return {"ok", "status" or "error"} instead of raising."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "arcface-kfp"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return {"ok": 200 <= answer.status < 300, "status": answer.status}
    except urllib.error.HTTPError as e:
        return {"ok": False, "status": e.code, "error": f"HTTP {e.code} {e.reason}"}
    except (urllib.error.URLError, OSError, ValueError) as e:  # refused, unresolvable, timed out, bad URL
        return {"ok": False, "error": f"{type(e).__name__}: {getattr(e, 'reason', e)}"}


def run_end_record(*, state: str, run_id: str, task: str | None = None, error_code: int | None = None,
                   error_message: str | None = None, model_name: str = "") -> dict[str, Any]:
    """The record of how a run ended: SUCCEEDED, FAILED or CANCELLED, and on failure where and why."""
    record: dict[str, Any] = {"kind": RUN_LOG_KIND, "run_id": run_id, "state": state, "model_name": model_name}
    if state != "SUCCEEDED":
        # What the platform reports (kfp.local names only the exit handler's group: "Task exit-handler-1
        # failed."); report_run_end puts the failing step's own record first when the store has one.
        record.update(failed_task=task, error_code=error_code, error_message=error_message)
    return record


@contextlib.contextmanager
def failures_logged(step: str, *, model_store: str, model_name: str, run_id: str) -> Iterator[None]:
    """Run a pipeline step's body; an exception escaping it is appended to the store's run log as
    {"kind": "step_failed", "step", "run_id", "error"} and raised again (the step still fails). No store: nothing
    is written. Writing the log never replaces the step's own error."""
    try:
        yield
    except Exception as e:
        with contextlib.suppress(Exception):
            store = open_store(model_store, model_name)
            if store is not None:
                store.log_run({"kind": STEP_FAILED_KIND, "run_id": run_id, "step": step,
                               "error": f"{type(e).__name__}: {e}"[:ERROR_CHARS]})
        raise


def _failed_steps(store, run_id: str) -> list[dict[str, Any]]:
    return [r for r in store.runs() if r.get("kind") == STEP_FAILED_KIND and r.get("run_id") == run_id]


def report_run_end(record: dict[str, Any], *, model_store: str = "", model_name: str = "arcface",
                   notify_url: str = "", timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Append ``record`` to the store's run log (when there is a store) and POST it to ``notify_url`` (when
    given). Returns what happened to each, for the step's log; never raises for either."""
    outcome: dict[str, Any] = {"record": record, "run_log": None, "webhook": None}
    try:
        store = open_store(model_store, model_name)
        if store is not None:
            failed = _failed_steps(store, record["run_id"]) if record["state"] != "SUCCEEDED" else []
            if failed:  # the step's own words, not only the platform's group name; the last failure ended
                # the run (an earlier one may have been retried)
                record.update(platform_task=record.get("failed_task"),
                              platform_message=record.get("error_message"),
                              failed_task=failed[-1]["step"], error_message=failed[-1]["error"])
            store.log_run(record)
            outcome["run_log"] = {"ok": True, "path": store.folder}
    except Exception as e:  # an unwritable store must not turn the run's status into another one
        outcome["run_log"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if notify_url.strip():
        outcome["webhook"] = post_json(notify_url.strip(), record, timeout)
    return outcome
