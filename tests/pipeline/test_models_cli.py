"""``pipeline.py models list|show|rollback``: the command line over arcface.mlops.store."""

from __future__ import annotations

import json

import pipeline
from arcface.mlops.store import ModelStore
from tests.core.test_store import export_folder


def test_list_show_and_rollback(tmp_path, capsys):
    store = ModelStore(tmp_path / "store", "faces")
    for run in ("run-a", "run-b"):
        store.add_version(export_folder(tmp_path / run), run_id=run, metrics={"verification_accuracy": 0.9})
    base = ["--store", str(tmp_path / "store"), "--model", "faces"]
    assert pipeline.main(["models", "list", *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("     1 ") and "run run-a" in lines[0] and "replaced -" in lines[0]
    assert lines[1].startswith("*    2 ") and "accuracy 0.9000" in lines[1] and "replaced 1" in lines[1]
    assert pipeline.main(["models", "show", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["current"], shown["run_id"]) == (2, True, "run-b")
    assert shown["path"] == str(tmp_path / "store" / "faces" / "2")
    assert pipeline.main(["models", "rollback", *base]) == 0
    assert "current version 2 -> 1" in capsys.readouterr().out
    assert store.current() == 1
    assert pipeline.main(["models", "rollback", *base, "--version", "5"]) == 2
    assert "version 5 is not in" in capsys.readouterr().err


def test_an_empty_store_says_so(tmp_path, capsys):
    assert pipeline.main(["models", "list", "--store", str(tmp_path)]) == 0
    assert "no versions" in capsys.readouterr().out
    assert pipeline.main(["models", "show", "--store", str(tmp_path)]) == 2
    assert "has no current version; name one with --version" in capsys.readouterr().err
