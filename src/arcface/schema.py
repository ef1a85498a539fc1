"""The schema version every JSON file of this package carries, and the one check of it.

Kept apart from :mod:`arcface.contracts` so that the manifest (:mod:`arcface.data.manifest`, read by
``contracts``) checks its version without importing the module that imports it.
"""

from __future__ import annotations

from typing import Any

SCHEMA_KEY = "schema_version"


class ContractError(ValueError):
    """A step output is missing, unreadable, or was written by another version of its step."""


def check_version(document: dict[str, Any], expected: int, source: str, producer: str,
                  key: str = SCHEMA_KEY) -> None:
    """Refuse a document whose ``key`` is not ``expected``: its fields may mean something else."""
    found = document.get(key)
    if found == expected and not isinstance(found, bool):
        return
    what = f"no {key}" if found is None else f"{key} {found!r}"
    raise ContractError(f"{source} has {what}, but this package reads {key} {expected}; it was written by "
                        f"another release of arcface-kfp: re-run {producer} with this one to write it again")
