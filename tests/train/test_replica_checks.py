"""What the Trainer refuses on several replicas, under real strategies: two logical CPU devices in one process
(MirroredStrategy) and two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy, TF_CONFIG as Kubeflow's
training operator sets it).

Each runs in subprocesses: logical devices are fixed once TensorFlow has started, and a process joins one
cluster only. The Trainer checks before it builds anything, so a refusal costs the processes' start only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.train.test_distributed import REPO, env, free_ports, wait_all

PREAMBLE = """
    import json, sys
    import tensorflow as tf
    from arcface.data import Manifest
    from arcface.train import Trainer, TrainingError, pick_strategy
    from tests.train.conftest import tiny_config

    def attempt(save_path, **changes):
        try:
            Trainer(tiny_config(save_path, **changes), Manifest.read({manifest!r}), verbose=0)
            error = None
        except TrainingError as e:
            error = str(e)
        strategy = pick_strategy()  # the Trainer's own (one per process)
        return {{"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), "error": error}}
"""


@pytest.fixture(scope="module")
def manifest_file(tiny_manifest, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    tiny_manifest.write(str(path))
    return str(path)


def result(output: str) -> dict:
    assert "RESULT " in output, output[-3000:]
    return json.loads(output.split("RESULT ", 1)[1].splitlines()[0])


def test_the_batch_must_split_evenly_over_two_logical_cpus(manifest_file, tmp_path):
    script = textwrap.dedent(PREAMBLE.format(manifest=manifest_file)) + textwrap.dedent(f"""
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        out = {{batch: attempt({str(tmp_path)!r} + f"/batch-{{batch}}", batch_size=batch) for batch in (7, 8)}}
        print("RESULT " + json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = result(done.stdout)
    assert (out["7"]["strategy"], out["7"]["replicas"], out["7"]["multi_worker"]) == ("MirroredStrategy", 2, False)
    assert out["7"]["error"] == ("--batch_size=7 must be a multiple of the 2 replicas so that every device gets "
                                 "the same share")
    assert out["8"]["error"] is None, "an even batch is trained"


def test_several_workers_refuse_partial_fc(manifest_file, tmp_path):
    """--sample_rate < 1 shards the class centres over one machine's replicas; two workers refuse it before
    training (the chief's checkpoint would hold only its own rows)."""
    script = textwrap.dedent(PREAMBLE.format(manifest=manifest_file)) + textwrap.dedent("""
        print("RESULT " + json.dumps(attempt(sys.argv[1], sample_rate=0.5)))
    """)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        log = open(tmp_path / f"worker-{index}.log", "w")  # noqa: SIM115 - closed with the process
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"save-{index}")], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=REPO, env=env(TF_CONFIG=tf_config)))
        log.close()
    codes = wait_all(procs, timeout=240)
    logs = [(tmp_path / f"worker-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    for log in logs:
        out = result(log)
        assert out["multi_worker"] and out["replicas"] == 2, out
        assert out["error"] and out["error"].startswith(
            "--sample_rate < 1 (Partial-FC) shards the class centres over the replicas of one machine; with "
            "several workers"), out
        assert "Use --sample_rate=1.0 with several workers, or one worker with several devices" in out["error"]
