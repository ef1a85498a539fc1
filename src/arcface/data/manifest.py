"""The manifest: the list of images a training run may read, written once by the validation step.

Training never walks the dataset folders itself: it reads ``manifest.json``, so the images it trains on are
exactly the ones that were checked, and the manifest's hash (stored next to the model) says which data a model
saw. The file is JSON, one object::

    {"version": 1,
     "roots": {"train": "/abs/train", "validation": "/abs/validation"},
     "class_names": ["s1", "s10", ...],              # sorted train identities; label = index
     "rows": [{"path": "s1/1.pgm", "identity": "s1", "split": "train",
               "width": 92, "height": 112, "sha256": "...", "orientation": 1}, ...]}

``path`` is relative to the root of its split with ``/`` separators, so a manifest stays valid when the same
tree is mounted elsewhere (only ``roots`` changes, and ``roots`` is not part of the content hash). A relative
root is relative to the manifest file's folder (the align step's crops live beside its manifest).

The align step's manifest also carries ``"alignment"`` ({method, detector, template, image_size}): its rows
are face crops on the ArcFace template, and a model trained on them records it (see
:mod:`arcface.data.align`). A manifest without the key holds the images as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from arcface import atomic
from arcface.schema import check_version

MANIFEST_VERSION = 1
SPLITS = ("train", "validation")


class DataError(ValueError):
    """The dataset (or a manifest) cannot be used; the message names the files, the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to roots[split], '/'-separated
    identity: str
    split: str  # 'train' | 'validation'
    width: int  # as the input pipeline sees it: after the EXIF orientation is applied
    height: int
    sha256: str
    # EXIF orientation tag (1..8) the input pipeline must apply; 1 = stored upright. Optional in the file.
    orientation: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.orientation == 1:  # keep the common case short and the file diffable
            del d["orientation"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRow:
        try:
            return cls(path=str(d["path"]), identity=str(d["identity"]), split=str(d["split"]),
                       width=int(d["width"]), height=int(d["height"]), sha256=str(d["sha256"]),
                       orientation=int(d.get("orientation", 1)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"manifest row {d!r} is malformed ({e}); regenerate the manifest with "
                            "`arcface validate`") from None


@dataclasses.dataclass
class Manifest:
    rows: list[ManifestRow]
    roots: dict[str, str]
    class_names: list[str]
    version: int = MANIFEST_VERSION
    alignment: dict[str, Any] | None = None  # None: the images as they are (not aligned crops)

    # --- reading and writing ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"version": self.version, "roots": dict(self.roots), "class_names": list(self.class_names),
             "rows": [r.to_dict() for r in self.rows]}
        if self.alignment is not None:
            d["alignment"] = dict(self.alignment)
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or not {"roots", "class_names", "rows"} <= set(data):
            raise DataError(f"{source} is not a manifest (expected an object with version, roots, class_names "
                            "and rows); regenerate it with `arcface validate`")
        check_version(data, MANIFEST_VERSION, source, "the validate step (`arcface validate`)", key="version")
        alignment = data.get("alignment")
        return cls(rows=[ManifestRow.from_dict(r) for r in data["rows"]],
                   roots={str(k): str(v) for k, v in data["roots"].items()},
                   class_names=[str(c) for c in data["class_names"]],
                   alignment=dict(alignment) if isinstance(alignment, dict) else None)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"manifest {path} does not exist; run the validation step (`arcface validate`) "
                            "to write one") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"manifest {path} is not valid JSON ({e}); regenerate it with `arcface validate`") \
                from None
        manifest = cls.from_dict(data, source=str(path))
        folder = os.path.dirname(os.path.abspath(path))
        manifest.roots = {split: os.path.normpath(os.path.join(folder, root)) for split, root in manifest.roots.items()}
        return manifest

    def write(self, path: str | os.PathLike) -> None:
        """Write through a temporary file and a rename, so a reader never sees half a manifest."""
        with atomic.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            # One row per line: readable, and a diff of two manifests shows the files that changed.
            alignment = f' "alignment": {json.dumps(self.alignment, sort_keys=True)},\n' if self.alignment else ""
            f.write(f'{{"version": {self.version},\n "roots": {json.dumps(self.roots, sort_keys=True)},\n{alignment} '
                    f'"class_names": {json.dumps(self.class_names)},\n "rows": [\n')
            f.write(",\n".join("  " + json.dumps(r.to_dict(), ensure_ascii=False) for r in self.rows))
            f.write("\n ]}\n")

    # --- identity ---------------------------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        """Hash of what a model learns from: class names and rows (not the roots, which vary by mount)."""
        content = {"version": self.version, "class_names": self.class_names,
                   "rows": sorted((r.to_dict() for r in self.rows), key=lambda d: (d["split"], d["path"]))}
        if self.alignment is not None:  # aligned crops are other data; unaligned manifests keep their hash
            content["alignment"] = self.alignment
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    # --- views --------------------------------------------------------------------------------------------
    def _check_split(self, name: str) -> None:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of: {', '.join(SPLITS)}")

    def split(self, name: str) -> list[ManifestRow]:
        self._check_split(name)
        return [r for r in self.rows if r.split == name]

    def identities(self, split: str) -> list[str]:
        """The sorted identities that have at least one image in the split."""
        return sorted({r.identity for r in self.split(split)})

    def labels(self, split: str) -> list[int]:
        """The label of each row of the split (index into ``class_names``), in row order."""
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({r.identity for r in self.split(split) if r.identity not in index})
        if unknown:
            raise DataError(f"the {split} split of the manifest has identities that are not training classes: "
                            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; add training "
                            "images for them or remove them, then run the validation step again")
        return [index[r.identity] for r in self.split(split)]

    def absolute_paths(self, split: str) -> list[str]:
        self._check_split(split)
        root = self.roots.get(split)
        if root is None:
            raise DataError(f"the manifest has no root for the {split} split; regenerate it with `arcface validate`")
        return [os.path.join(root, *r.path.split("/")) for r in self.split(split)]
