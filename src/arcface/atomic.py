"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every file this package writes (configs, manifests, metrics, reports, models, embeddings) goes through
:func:`replacing`: the content is written to a temporary name beside the target, then renamed onto it. A process
killed in between leaves only its temporary, named ``<stem>.tmp-<pid><suffix>``, which
:func:`remove_stale_temporaries` recognises and removes once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

# Suffixes that a writer insists on (Keras checks ``.keras`` and ``.weights.h5``), kept on the temporary name.
_KEPT_SUFFIXES = (".weights.h5", ".keras", ".h5")
_TEMPORARY = re.compile(r"\.tmp-(\d+)")


def temporary_name(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    suffix = next((s for s in _KEPT_SUFFIXES if path.endswith(s)), "")
    return f"{path[: len(path) - len(suffix)]}.tmp-{os.getpid()}{suffix}"


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path``, on an exception it is removed."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporaries that a killed writer left under ``folder``; returns their paths.

    Files of a process that is still running are kept: it may be about to rename them.
    """
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            match = _TEMPORARY.search(name)
            if match and not process_alive(int(match.group(1))):
                path = os.path.join(root, name)
                os.remove(path)
                removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another machine's pid means nothing here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
