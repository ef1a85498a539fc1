"""The exit step: the store's run log and a webhook on 127.0.0.1 (up, failing, down), then through kfp.local."""

# No `from __future__ import annotations`: the test components below need real annotations for KFP.
import http.server
import json
import socket
import threading
import time
import urllib.request

import pytest
from kfp import dsl, local

from arcface.mlops.notify import failures_logged, report_run_end, run_end_record
from arcface.mlops.store import ModelStore
from components.common import LIGHT_IMAGE
from components.notify import report_run_end as report_component


class Webhook:
    """An HTTP server on a free 127.0.0.1 port that records each POST body and answers ``status``."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.bodies: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                time.sleep(delay)
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook():
    servers = []

    def start(**kwargs) -> Webhook:
        servers.append(Webhook(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


FAILED = run_end_record(state="FAILED", run_id="run-7", task="train-model", error_code=1,
                        error_message="Task train-model failed.", model_name="arcface")


def test_a_failure_is_logged_in_the_store_and_posted(tmp_path, webhook):
    hook = webhook()
    outcome = report_run_end(FAILED, model_store=str(tmp_path), model_name="arcface", notify_url=hook.url)
    assert outcome["webhook"] == {"ok": True, "status": 200} and outcome["run_log"]["ok"] is True
    (logged,) = ModelStore(tmp_path).runs()
    assert hook.bodies == [FAILED]
    assert {k: logged[k] for k in FAILED} == FAILED  # the store keeps the same record, plus its time
    assert (logged["state"], logged["failed_task"], logged["error_message"]) == \
        ("FAILED", "train-model", "Task train-model failed.")


def test_success_carries_no_error_fields():
    record = run_end_record(state="SUCCEEDED", run_id="r", task="exit-handler-1")
    assert record == {"kind": "run_end", "run_id": "r", "state": "SUCCEEDED", "model_name": ""}


@pytest.mark.parametrize("kind", ["down", "error", "slow"])
def test_a_webhook_that_fails_never_hides_the_run_or_its_record(tmp_path, webhook, kind):
    url = closed_port_url() if kind == "down" else webhook(status=500 if kind == "error" else 200,
                                                          delay=3.0 if kind == "slow" else 0.0).url
    start = time.monotonic()
    outcome = report_run_end(FAILED, model_store=str(tmp_path), notify_url=url, timeout=1.0)
    assert time.monotonic() - start < 2.5  # bounded: a hung endpoint does not hold the run
    assert outcome["webhook"]["ok"] is False and outcome["webhook"]["error"]
    assert [r["state"] for r in ModelStore(tmp_path).runs()] == ["FAILED"]


def test_the_exit_step_bounds_a_hung_webhook_by_the_10_s_default(tmp_path, webhook, monkeypatch, capsys):
    """The component passes no timeout: the default must reach the request, or a webhook that never answers holds
    the exit step (and the run) for as long as the connection stays open. The request really goes to a hung
    server, with the timeout it was given scaled down 20 times, so the test waits 0.5 s instead of 10."""
    hook = webhook(delay=5.0)  # accepts the connection, answers 5 s later: "never", for a 0.5 s timeout
    timeouts, real_urlopen = [], urllib.request.urlopen

    def urlopen(request, *args, **kwargs):
        timeout = kwargs.pop("timeout", args[1] if len(args) > 1 else None)
        timeouts.append(timeout)
        scaled = timeout / 20 if isinstance(timeout, int | float) else None  # None: no timeout, as urlopen's
        return real_urlopen(request, timeout=scaled)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    status = dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="jobs/run-5",
                                         pipeline_task_name="exit-handler-1", error_code=1,
                                         error_message="Task exit-handler-1 failed.")
    start = time.monotonic()
    report_component.python_func(status=status, model_store=str(tmp_path), model_name="arcface",
                                 notify_url=hook.url, run_id="run-5")
    took = time.monotonic() - start
    assert timeouts == [10.0]
    assert took < 3.0, f"the exit step waited {took:.1f} s for a webhook that does not answer"
    out = capsys.readouterr().out
    assert "run ended: FAILED" in out and '"webhook": {"ok": false' in out and "timed out" in out, out
    assert [r["state"] for r in ModelStore(tmp_path).runs()] == ["FAILED"]  # the run's record is written anyway


def test_no_store_and_no_url_is_quietly_nothing(tmp_path):
    assert report_run_end(FAILED) == {"record": FAILED, "run_log": None, "webhook": None}


def test_an_unwritable_store_is_reported_not_raised(tmp_path, webhook):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    hook = webhook()
    outcome = report_run_end(FAILED, model_store=str(blocker), notify_url=hook.url)
    assert outcome["run_log"]["ok"] is False and hook.bodies == [FAILED]


def test_the_component_turns_kfps_status_into_the_record(tmp_path, webhook, capsys):
    hook = webhook()
    status = dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="jobs/run-9",
                                         pipeline_task_name="exit-handler-1", error_code=1,
                                         error_message="Task exit-handler-1 failed.")
    report_component.python_func(status=status, model_store=str(tmp_path), model_name="arcface",
                                 notify_url=hook.url, run_id="run-9")
    assert "run ended: FAILED" in capsys.readouterr().out
    (body,) = hook.bodies
    assert body["run_id"] == "run-9" and body["failed_task"] == "exit-handler-1"


def test_a_failing_step_is_named_with_its_own_error_in_the_record(tmp_path, webhook):
    """The step's own failure (failures_logged) replaces the platform's group name; the step still fails."""
    step = {"model_store": str(tmp_path), "model_name": "arcface"}
    with pytest.raises(FileNotFoundError, match="no-pairs.txt"), \
            failures_logged("evaluate-model", **step, run_id="run-3"):
        (tmp_path / "no-pairs.txt").read_text()
    with failures_logged("train-model", **step, run_id="run-3"):
        pass  # a step that succeeds records nothing
    with pytest.raises(ValueError), failures_logged("train-model", **step, run_id="run-2"):
        raise ValueError("lr")  # another run's failure is not this run's
    hook = webhook()
    platform = run_end_record(state="FAILED", run_id="run-3", task="exit-handler-1", error_code=1,
                              error_message="Task exit-handler-1 failed.", model_name="arcface")
    report_run_end(platform, model_store=str(tmp_path), notify_url=hook.url)
    record = ModelStore(tmp_path, "arcface").runs()[-1]
    assert record["failed_task"] == "evaluate-model"
    assert record["error_message"].startswith("FileNotFoundError:") and "no-pairs.txt" in record["error_message"]
    assert (record["platform_task"], record["platform_message"]) == ("exit-handler-1", "Task exit-handler-1 failed.")
    assert hook.bodies[0]["failed_task"] == "evaluate-model"


def test_without_a_store_a_failing_step_still_fails_with_its_own_error(tmp_path):
    with pytest.raises(KeyError, match="epochs"), \
            failures_logged("train-model", model_store="", model_name="arcface", run_id="run-1"):
        raise KeyError("epochs")
    assert list(tmp_path.iterdir()) == []


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def fails(message: str):
    raise RuntimeError(message)


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def succeeds() -> str:
    return "ok"


@pytest.mark.parametrize("fail", [False, True])
def test_kfp_local_runs_the_exit_step_after_success_and_failure(tmp_path, webhook, fail):
    """kfp.local 2.17.3 runs a dsl.ExitHandler's step and gives it a PipelineTaskFinalStatus; on failure it
    names only the exit handler's group ('Task exit-handler-1 failed.'), not the step inside that failed."""
    hook = webhook()

    @dsl.pipeline(name="exit-only")
    def exit_only():
        report = report_component(model_store=str(tmp_path / "store"), model_name="arcface", notify_url=hook.url,
                                  run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        with dsl.ExitHandler(report):
            if fail:
                fails(message="boom")
            else:
                succeeds()

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=False)
    exit_only()
    (record,) = ModelStore(tmp_path / "store").runs()
    assert record["state"] == ("FAILED" if fail else "SUCCEEDED")
    (run_dir,) = (tmp_path / "root").iterdir()
    assert record["run_id"] == run_dir.name
    if fail:
        assert record["failed_task"] == "exit-handler-1" and record["error_message"] == "Task exit-handler-1 failed."
    assert hook.bodies == [{k: v for k, v in record.items() if k != "time"}]
