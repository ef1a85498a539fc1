"""The dataset validation step: check every file once, report every problem, write the manifest.

The step reads the two split folders (``<root>/<identity>/<image>``), opens every file read-only, and writes
``manifest.json`` (the images training may use), ``report.json`` (every finding, machine-readable) and
``report.md`` (the same for a human, shown in the KFP UI). Nothing in the dataset is ever modified, moved or
deleted: files are opened with ``open(path, "rb")`` and nothing else touches them.

Every finding has a stable ``code`` (see :data:`CODES`), a ``severity`` and the ``action`` taken:

* ``excluded`` / ``refused``: the file (or identity) is left out of the manifest. Any finding of severity
  ``error`` makes ``strict=True`` raise :class:`DataError` listing every problem and its fix; with
  ``strict=False`` the files are excluded with a warning and the step succeeds if something usable remains.
* ``converted``: the file is usable; the input pipeline converts it at load time (grey to RGB, palette, alpha
  dropped, 16-bit scaled to 8-bit, CMYK to RGB, EXIF orientation applied).
* ``kept``: usable as it is, but worth knowing (tiny image, identity without validation images).

Speed: each file's bytes are read once, hashed and parsed from memory in a thread pool (hashlib and Pillow's
decoders release the GIL). JPEGs are fully entropy-decoded, which is the only way to find a truncated or
corrupt JPEG, but in Pillow's draft mode (1/8 scale DCT), which is about twice as fast as a full decode.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import io
import logging
import os
import stat
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from arcface.contracts import ManifestDir
from arcface.data.manifest import DataError, Manifest, ManifestRow

log = logging.getLogger("arcface.data")


TRAIN_DIR_NAMES = ("train",)
VALIDATION_DIR_NAMES = ("validation", "val")

# Formats the input pipeline decodes (tf.io.decode_image, plus a pure-TF parser for binary PGM/PPM).
SUPPORTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "PPM": "PGM/PPM", "BMP": "BMP", "GIF": "GIF"}
# Files operating systems leave behind; they are skipped quietly (info), not reported as broken images.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", ".directory", "icon\r"}
EXIF_ORIENTATION_TAG = 0x0112

# code -> (severity, action, how to fix). Codes are stable: the tests, the report and downstream tools use them.
CODES: dict[str, tuple[str, str, str]] = {
    "non_utf8_name": ("error", "excluded", "rename the file or folder to a valid UTF-8 name"),
    "symlink_loop": ("error", "excluded", "remove the symbolic link that points back into its own folder"),
    "broken_link": ("error", "excluded", "remove the dangling symbolic link or restore its target"),
    "empty_file": ("error", "excluded", "delete the zero-byte file or copy the image again"),
    "not_an_image": ("error", "excluded", "move files that are not images out of the dataset folders"),
    "unsupported_format": ("error", "excluded", "convert the image to JPEG or PNG"),
    "corrupt_image": ("error", "excluded", "re-download or re-export the image; it is truncated or damaged"),
    "decompression_bomb": ("error", "refused", "downscale the image below the pixel limit (or raise "
                                               "max_pixels if it is a genuine large photo)"),
    "duplicate_in_split": ("warning", "excluded", "delete the extra copies of the same image"),
    "duplicate_label_conflict": ("error", "excluded", "the same image is filed under several identities: "
                                                      "keep it under the right one only"),
    "duplicate_across_splits": ("error", "excluded", "an image in validation is also in train (leakage): "
                                                     "remove it from one of the splits"),
    "empty_identity": ("error", "excluded", "add images to the identity folder or remove the folder"),
    "too_few_images": ("error", "excluded", "add training images for the identity, lower --min_images, "
                                            "or remove the identity"),
    "identity_missing_in_train": ("error", "excluded", "add training images for the identity or remove its "
                                                       "validation folder"),
    "identity_missing_in_validation": ("warning", "kept", "add validation images for the identity so its "
                                                          "accuracy is measured"),
    "stray_file": ("warning", "excluded", "move files out of the split root into an <identity>/ folder"),
    "hidden_folder": ("info", "excluded", "nothing to do; hidden folders are not identities"),
    "system_file": ("info", "excluded", "nothing to do; operating-system metadata files are skipped"),
    "tiny_image": ("warning", "kept", "check the face crop; very small images carry little detail"),
    "exif_orientation": ("info", "converted", "nothing to do; the rotation is applied when loading"),
    "animated_image": ("info", "converted", "nothing to do; the first frame is used"),
    "mode_grey": ("info", "converted", "nothing to do; grey is replicated to RGB when loading"),
    "mode_palette": ("info", "converted", "nothing to do; the palette is expanded to RGB when loading"),
    "mode_alpha": ("info", "converted", "check the image: the alpha channel is dropped when loading"),
    "mode_high_bit_depth": ("info", "converted", "nothing to do; 16-bit samples are scaled to 8-bit"),
    "mode_cmyk": ("info", "converted", "nothing to do; CMYK is converted to RGB when loading"),
}

_MODE_CODES = {"L": "mode_grey", "1": "mode_grey", "P": "mode_palette", "RGBA": "mode_alpha", "LA": "mode_alpha",
               "PA": "mode_alpha", "La": "mode_alpha", "RGBa": "mode_alpha", "CMYK": "mode_cmyk",
               "I": "mode_high_bit_depth", "I;16": "mode_high_bit_depth", "I;16B": "mode_high_bit_depth",
               "I;16L": "mode_high_bit_depth", "I;16N": "mode_high_bit_depth", "F": "mode_high_bit_depth"}


@dataclasses.dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # 'error' | 'warning' | 'info'
    path: str  # absolute path of the file or folder (undecodable bytes shown as \xNN)
    message: str
    action: str  # 'excluded' | 'converted' | 'kept' | 'refused'

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _finding(code: str, path: str, message: str) -> Finding:
    severity, action, _ = CODES[code]
    return Finding(code=code, severity=severity, path=path, message=message, action=action)


@dataclasses.dataclass
class ValidationResult:
    manifest: Manifest
    report: dict[str, Any]
    # True when no finding has severity 'error' (nothing had to be excluded). A result is only returned when
    # the data is usable; unusable data raises DataError.
    ok: bool

    @property
    def findings(self) -> list[dict[str, str]]:
        return self.report["findings"]

    def markdown(self) -> str:
        """report.md (:class:`arcface.contracts.ManifestDir` writes it)."""
        return render_markdown(self.report)


# ---------------------------------------------------------------------------------------------------------
# Where the splits are
# ---------------------------------------------------------------------------------------------------------
def _resolve_one(path: str, split: str, own: tuple[str, ...], other: tuple[str, ...]) -> str:
    layout = (f"expected a folder of <identity>/ subfolders, or a folder holding {own[0]}/ "
              f"(e.g. {os.path.join(path or '.', own[0], '<identity>', '<image>.jpg')})")
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise DataError(f"{split} data folder {path!r} {what}: {layout}")
    for name in own:
        candidate = os.path.join(path, name)
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    # A root that holds the *other* split but not this one is a layout mistake, not a folder of identities.
    present = [name for name in other if os.path.isdir(os.path.join(path, name))]
    if present:
        raise DataError(f"{split} data folder {path!r} holds {present[0]}/ but no {' or '.join(n + '/' for n in own)}: "
                        f"add the {split} split there, or pass --{split}_data pointing at the folder of "
                        "<identity>/ subfolders")
    return os.path.abspath(path)


def resolve_roots(train_data: str, validation_data: str) -> tuple[str, str]:
    """The absolute (train, validation) split folders the flags point at.

    Each flag names a folder of ``<identity>/`` subfolders, or a root holding ``train/`` (resp.
    ``validation/`` or ``val/``), in which case that subfolder is used: the defaults ``./`` and ``./``
    resolve to ``./train`` and ``./validation``.
    """
    train = _resolve_one(train_data, "train", TRAIN_DIR_NAMES, VALIDATION_DIR_NAMES)
    validation = _resolve_one(validation_data, "validation", VALIDATION_DIR_NAMES, TRAIN_DIR_NAMES)
    if os.path.realpath(train) == os.path.realpath(validation):
        raise DataError(f"train and validation data are the same folder ({train}): every validation image would "
                        "also be a training image. Pass a separate --validation_data folder, or a root holding "
                        "train/ and validation/")
    return train, validation


# ---------------------------------------------------------------------------------------------------------
# Walking the tree (bytes, so a name that is not UTF-8 is reported instead of crashing the walk)
# ---------------------------------------------------------------------------------------------------------
def _show(path: bytes) -> str:
    return path.decode("utf-8", errors="backslashreplace")


@dataclasses.dataclass
class _Candidate:
    split: str
    identity: str
    rel: str  # '/'-separated, relative to the split root
    path: bytes  # absolute


@dataclasses.dataclass
class _Walk:
    candidates: list[_Candidate] = dataclasses.field(default_factory=list)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    identity_dirs: dict[str, str] = dataclasses.field(default_factory=dict)  # identity -> shown path
    files_seen: int = 0


def _decode_name(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _dir_key(path: bytes) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _named_entries(walk: _Walk, entries):
    """(entry, shown path, name, kind) for each entry whose name is UTF-8; the others become findings."""
    for entry in entries:
        shown = _show(entry.path)
        name = _decode_name(entry.name)
        if name is None:
            walk.files_seen += 1
            walk.findings.append(_finding("non_utf8_name", shown, "the name is not valid UTF-8, so it cannot be "
                                          "stored in the manifest; it is skipped"))
            continue
        yield entry, shown, name, _entry_kind(entry)


def _is_system_file(name: str) -> bool:
    return name.lower() in SYSTEM_FILES or name.startswith("._")


def _walk_split(split: str, root: str) -> _Walk:
    walk = _Walk()
    root_b = os.fsencode(root)
    visited: set[tuple[int, int]] = {_dir_key(root_b)}
    try:
        entries = sorted(os.scandir(root_b), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list the {split} folder {root}: {e.strerror}; check that it exists and is "
                        "readable") from None
    for entry, shown, name, kind in _named_entries(walk, entries):
        if kind == "dir":
            if name.startswith("."):
                walk.findings.append(_finding("hidden_folder", shown, "hidden folder skipped"))
                continue
            key = _dir_key(entry.path)
            if key in visited:  # a link back to the split root, or a second link to the same folder
                walk.findings.append(_finding("symlink_loop", shown, "symbolic link to a folder already read "
                                              "(the split root or another identity); it is skipped"))
                continue
            walk.identity_dirs[name] = shown
            visited.add(key)
            _walk_identity(walk, split, name, entry.path, name, {key}, visited)
        elif kind == "file":
            walk.files_seen += 1
            if _is_system_file(name):
                walk.findings.append(_finding("system_file", shown, "operating-system metadata file skipped"))
            else:
                walk.findings.append(_finding("stray_file", shown, f"file directly in the {split} root, not in "
                                              "an <identity>/ folder; it is skipped"))
        else:
            walk.findings.append(_link_finding(kind, shown))
    return walk


def _entry_kind(entry: os.DirEntry) -> str:
    """'dir', 'file', 'loop', 'broken' or 'other' (sockets, devices), following symbolic links."""
    try:
        st = os.stat(entry.path)
    except OSError as e:
        return "loop" if e.errno == errno.ELOOP else "broken"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


def _link_finding(kind: str, shown: str) -> Finding:
    if kind == "loop":
        return _finding("symlink_loop", shown, "symbolic link loop (it resolves to itself); it is skipped")
    if kind == "broken":
        return _finding("broken_link", shown, "dangling symbolic link (its target does not exist); it is skipped")
    return _finding("not_an_image", shown, "not a regular file (socket, device or pipe); it is skipped")


def _walk_identity(walk: _Walk, split: str, identity: str, folder: bytes, rel: str,
                   ancestors: set[tuple[int, int]], visited: set[tuple[int, int]]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        walk.findings.append(_finding("corrupt_image", _show(folder), f"cannot list the folder: {e.strerror}"))
        return
    for entry, shown, name, kind in _named_entries(walk, entries):
        if kind == "dir":
            key = _dir_key(entry.path)
            if key in ancestors:
                walk.findings.append(_finding("symlink_loop", shown, "symbolic link to a folder that contains it; "
                                              "following it would never end, so it is skipped"))
            elif key in visited:
                # A second link to a folder already read: its images are already in the manifest once.
                walk.findings.append(_finding("symlink_loop", shown, "second link to a folder already read; "
                                              "it is skipped so its images are not counted twice"))
            elif name.startswith("."):
                walk.findings.append(_finding("hidden_folder", shown, "hidden folder skipped"))
            else:
                visited.add(key)
                _walk_identity(walk, split, identity, entry.path, f"{rel}/{name}", ancestors | {key}, visited)
        elif kind == "file":
            walk.files_seen += 1
            if _is_system_file(name):
                walk.findings.append(_finding("system_file", shown, "operating-system metadata file skipped"))
            else:
                walk.candidates.append(_Candidate(split, identity, f"{rel}/{name}", entry.path))
        else:
            walk.files_seen += 1
            walk.findings.append(_link_finding(kind, shown))


# The decompression-bomb limit: an image announcing more pixels is refused before it is decoded (the
# validation step's default, and the model server's limit for uploaded photos).
MAX_PIXELS = 40_000_000


# ---------------------------------------------------------------------------------------------------------
# Inspecting one file
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Inspection:
    usable: bool
    width: int = 0
    height: int = 0
    sha256: str = ""
    orientation: int = 1
    findings: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (code, message)


def _inspect(path: bytes, max_pixels: int, min_side: int) -> _Inspection:
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:  # read-only, once; everything below works on these bytes
            data = f.read()
    except OSError as e:
        return _Inspection(False, findings=[("corrupt_image", f"cannot read the file: {e.strerror}")])
    if not data:
        return _Inspection(False, findings=[("empty_file", "the file is empty (0 bytes)")])
    digest = hashlib.sha256(data).hexdigest()
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _Inspection(False, sha256=digest, findings=[("not_an_image", "not an image file (Pillow cannot "
                                                            "identify it)")])
    except Image.DecompressionBombError as e:
        return _Inspection(False, sha256=digest, findings=[("decompression_bomb", str(e))])
    except Exception as e:  # a damaged header: Pillow raises SyntaxError, OSError, ValueError, struct.error...
        return _Inspection(False, sha256=digest, findings=[("corrupt_image", f"damaged header: {e}")])
    fmt, mode, (width, height) = im.format, im.mode, im.size
    refused = _refused_header(fmt, data, width, height, max_pixels)
    if refused:
        return _Inspection(False, sha256=digest, findings=[refused])
    try:
        orientation, frames = _decode(im, data, fmt)
    except Image.DecompressionBombError as e:
        return _Inspection(False, sha256=digest, findings=[("decompression_bomb", str(e))])
    except Exception as e:
        return _Inspection(False, sha256=digest, findings=[("corrupt_image", f"cannot decode: {e}")])
    return _usable(data, fmt, mode, width, height, digest, orientation, frames, min_side)


def _refused_header(fmt: str, data: bytes, width: int, height: int, max_pixels: int) -> tuple[str, str] | None:
    """The finding that refuses a file from its header alone, before any pixel is decoded; None if none does."""
    if fmt not in SUPPORTED_FORMATS:
        return ("unsupported_format", f"{fmt} images are not read by "
                "the input pipeline (JPEG, PNG, PGM/PPM, BMP, GIF are)")
    if fmt == "PPM" and data[:2] not in (b"P5", b"P6"):
        return ("unsupported_format", f"netpbm type {data[:2]!r} is not "
                "read by the input pipeline (binary P5/P6 are)")
    if width * height > max_pixels:
        return ("decompression_bomb", f"{width}x{height} = "
                f"{width * height:,} pixels exceeds the limit of "
                f"{max_pixels:,}; it is not decoded")
    return None


def _decode(im, data: bytes, fmt: str) -> tuple[int, int]:
    """Decode the whole file, so that a truncated or corrupt one raises here; its EXIF orientation and its
    number of frames (1 but for a GIF)."""
    from PIL import Image

    orientation, frames = 1, 1
    if fmt == "JPEG":
        orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
        # Draft mode decodes at 1/8 scale: every entropy-coded byte is still read (so truncation and
        # corrupt data are found) at about half the cost of a full decode.
        im.draft(None, (1, 1))
        im.load()
    else:
        im.verify()  # checks what load does not (PNG chunk CRCs); the object is unusable afterwards
        im = Image.open(io.BytesIO(data))
        frames = getattr(im, "n_frames", 1) if fmt == "GIF" else 1
        im.load()
    return orientation, frames


def _usable(data: bytes, fmt: str, mode: str, width: int, height: int, digest: str, orientation: int,
            frames: int, min_side: int) -> _Inspection:
    """A decoded file, with what loading it will change (orientation, frames, mode) and whether it is tiny."""
    result = _Inspection(True, width=width, height=height, sha256=digest)
    if orientation not in range(1, 9):
        orientation = 1
    if orientation != 1:
        if orientation >= 5:  # 5..8 transpose the image
            result.width, result.height = height, width
        result.orientation = orientation
        result.findings.append(("exif_orientation", f"EXIF orientation {orientation}: the rotation/flip is "
                                "applied when loading"))
    if fmt == "GIF" and frames > 1:
        result.findings.append(("animated_image", f"animated GIF with {frames} frames: the first is used"))
    mode_code = _MODE_CODES.get(mode)
    if fmt == "PPM" and mode != "RGB" and _pnm_maxval(data) > 255:
        mode_code = "mode_high_bit_depth"
    if mode_code:
        result.findings.append((mode_code, f"{fmt} in mode {mode}: converted to 8-bit RGB when loading"))
    if min(width, height) < min_side:
        result.findings.append(("tiny_image", f"{width}x{height} is smaller than {min_side} pixels on a side"))
    return result


def _pnm_maxval(data: bytes) -> int:
    fields = []
    for line in data[:512].split(b"\n"):
        fields.extend(line.split(b"#")[0].split())
        if len(fields) >= 4:
            break
    try:
        return int(fields[3])
    except (IndexError, ValueError):
        return 255


def _inspect_all(candidates: list[_Candidate], max_pixels: int, min_side: int,
                 workers: int | None) -> list[_Inspection]:
    from PIL import Image

    workers = workers or min(16, 2 * (os.cpu_count() or 1))  # 2x cores: overlap reading with decoding
    chunk = 64  # amortise the executor's per-task cost over several files

    def run(batch: list[_Candidate]) -> list[_Inspection]:
        return [_inspect(c.path, max_pixels, min_side) for c in batch]

    batches = [candidates[i:i + chunk] for i in range(0, len(candidates), chunk)]
    # Our own pixel limit is applied from the header; silence Pillow's (process-wide) warning meanwhile.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return [r for batch in pool.map(run, batches) for r in batch]


# ---------------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------------
def validate_dataset(train_data: str, validation_data: str, *, n_classes: int | None = None, min_images: int = 1,
                     strict: bool = False, max_pixels: int = MAX_PIXELS, min_side: int = 32,
                     output_dir: str | None = None, workers: int | None = None) -> ValidationResult:
    """Check every file of both splits and build the manifest; see the module docstring for the rules.

    Raises :class:`DataError` when the data is unusable (root missing, no identity folders, no usable images
    in a split, ``n_classes`` not matching the identities found) and, with ``strict=True``, when any finding
    has severity ``error``. The message lists every problem, naming the file, and how to fix it.
    """
    started = time.perf_counter()
    train_root, validation_root = resolve_roots(train_data, validation_data)
    roots = {"train": train_root, "validation": validation_root}
    if output_dir is not None:
        _check_output_outside(output_dir, roots)
    walks = {split: _walk_split(split, root) for split, root in roots.items()}
    _check_identity_folders(walks, roots)

    candidates = [c for split in roots for c in walks[split].candidates]
    inspections = _inspect_all(candidates, max_pixels, min_side, workers)
    findings: list[Finding] = [f for walk in walks.values() for f in walk.findings]
    usable = _usable_files(candidates, inspections, findings)
    usable = _drop_duplicates(usable, findings)
    usable, class_names = _check_identities(usable, walks, roots, min_images, findings)

    rows = [ManifestRow(path=c.rel, identity=c.identity, split=c.split, width=i.width, height=i.height,
                        sha256=i.sha256, orientation=i.orientation) for c, i in usable]
    rows.sort(key=lambda r: (r.split != "train", r.path))
    manifest = Manifest(rows=rows, roots=roots, class_names=class_names)
    errors = [f for f in findings if f.severity == "error"]
    _check_usable(manifest, walks, roots, class_names, n_classes, errors, strict)

    elapsed = time.perf_counter() - started
    report = _report(manifest, walks, findings, elapsed, dict(n_classes=n_classes, min_images=min_images,
                                                              strict=strict, max_pixels=max_pixels,
                                                              min_side=min_side))
    result = ValidationResult(manifest=manifest, report=report, ok=not errors)
    if output_dir is not None:
        ManifestDir.write(output_dir, result)
    return result


def _check_output_outside(output_dir: str, roots: dict[str, str]) -> None:
    out = os.path.realpath(output_dir)
    for split, root in roots.items():
        real = os.path.realpath(root)
        if out == real or out.startswith(real + os.sep):
            raise DataError(f"output_dir {output_dir} is inside the {split} data folder {root}: the step never "
                            "writes into the dataset. Pass an output folder outside it")


def _check_identity_folders(walks: dict[str, _Walk], roots: dict[str, str]) -> None:
    fatal = [f"the {split} folder {roots[split]} has no <identity>/ subfolders: expected "
             f"{os.path.join(roots[split], '<identity>', '<image>.jpg')}; point --{split}_data at the "
             "folder that holds one subfolder per person"
             for split, walk in walks.items() if not walk.identity_dirs]
    if fatal:
        raise DataError("the dataset cannot be used:\n  - " + "\n  - ".join(fatal))


def _usable_files(candidates: list[_Candidate], inspections: list[_Inspection],
                  findings: list[Finding]) -> list[tuple[_Candidate, _Inspection]]:
    """The files that can be read, in order; every file's findings are added to ``findings``."""
    usable: list[tuple[_Candidate, _Inspection]] = []
    for cand, ins in zip(candidates, inspections, strict=True):
        shown = _show(cand.path)
        findings.extend(_finding(code, shown, message) for code, message in ins.findings)
        if ins.usable:
            usable.append((cand, ins))
    return usable


def _check_usable(manifest: Manifest, walks: dict[str, _Walk], roots: dict[str, str], class_names: list[str],
                  n_classes: int | None, errors: list[Finding], strict: bool) -> None:
    """Raise when a split has no usable image, the identities do not match n_classes, or (strict) any file
    has an error; the message lists them all."""
    fatal = []
    for split in roots:
        if not manifest.split(split):
            fatal.append(f"the {split} folder {roots[split]} has no usable images (of {walks[split].files_seen} "
                         "files); see the findings above, and add JPEG/PNG/PGM/BMP/GIF images under "
                         "<identity>/ folders")
    if n_classes is not None and n_classes != len(class_names):
        fatal.append(f"--n_classes={n_classes} but the training data has {len(class_names)} usable identities "
                     f"({_preview(class_names)}); pass --n_classes={len(class_names)}, or add/remove identity "
                     "folders to match")
    if fatal or (strict and errors):
        problems = [f"{f.code}: {f.path}: {f.message} (fix: {CODES[f.code][2]})" for f in errors] if strict else []
        header = "the dataset failed strict validation" if strict and errors else "the dataset cannot be used"
        hint = ("\n(strict mode: fix these, or run without --strict to exclude the files with a warning)"
                if strict and errors else "")
        raise DataError(f"{header}:\n  - " + "\n  - ".join(fatal + problems) + hint)


def _preview(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _drop_duplicates(usable: list[tuple[_Candidate, _Inspection]],
                     findings: list[Finding]) -> list[tuple[_Candidate, _Inspection]]:
    """Same bytes twice: keep one copy in a split, none if labels conflict, and no validation copy of train."""
    groups: dict[tuple[str, str], list[tuple[_Candidate, _Inspection]]] = defaultdict(list)
    for item in usable:
        groups[(item[0].split, item[1].sha256)].append(item)
    dropped: set[bytes] = set()
    for (split, _), items in groups.items():
        if len(items) < 2:
            continue
        items.sort(key=lambda it: it[0].rel)
        identities = sorted({c.identity for c, _ in items})
        first = items[0][0]
        if len(identities) > 1:
            for c, _ in items:
                dropped.add(c.path)
                findings.append(_finding("duplicate_label_conflict", _show(c.path), f"the same image is in the "
                                         f"{split} split under {len(identities)} identities "
                                         f"({', '.join(identities)}); all copies are excluded"))
        else:
            for c, _ in items[1:]:
                dropped.add(c.path)
                findings.append(_finding("duplicate_in_split", _show(c.path), f"same bytes as {first.rel} in the "
                                         f"{split} split; the extra copy is excluded"))
    train_hashes = {i.sha256: c for c, i in usable if c.split == "train" and c.path not in dropped}
    for c, i in usable:
        if c.split == "validation" and c.path not in dropped and i.sha256 in train_hashes:
            dropped.add(c.path)
            findings.append(_finding("duplicate_across_splits", _show(c.path), "same bytes as the training image "
                                     f"{train_hashes[i.sha256].rel} (train/validation leakage); the validation "
                                     "copy is excluded"))
    return [it for it in usable if it[0].path not in dropped]


def _check_identities(usable: list[tuple[_Candidate, _Inspection]], walks: dict[str, _Walk],
                      roots: dict[str, str], min_images: int,
                      findings: list[Finding]) -> tuple[list[tuple[_Candidate, _Inspection]], list[str]]:
    counts: dict[str, Counter] = {split: Counter() for split in roots}
    for c, _ in usable:
        counts[c.split][c.identity] += 1
    for split, walk in walks.items():
        files = Counter(c.identity for c in walk.candidates)
        for identity, shown in walk.identity_dirs.items():
            if counts[split][identity] == 0:
                why = (f"none of its {files[identity]} files is usable (see the findings for them)"
                       if files[identity] else "it holds no image files")
                findings.append(_finding("empty_identity", shown, f"identity {identity!r} in the {split} split: "
                                         f"{why}; it is left out of the {split} split"))
    too_few = {identity for identity, n in counts["train"].items() if n < min_images}
    for identity in sorted(too_few):
        findings.append(_finding("too_few_images", walks["train"].identity_dirs[identity],
                                 f"identity {identity!r} has {counts['train'][identity]} usable training image(s), "
                                 f"fewer than --min_images={min_images}; it is excluded from both splits"))
    class_names = sorted(identity for identity in counts["train"] if identity not in too_few)
    classes = set(class_names)
    for identity in sorted(set(counts["validation"]) - classes - too_few):
        findings.append(_finding("identity_missing_in_train", walks["validation"].identity_dirs[identity],
                                 f"identity {identity!r} has {counts['validation'][identity]} validation image(s) "
                                 "but no usable training images, so it has no label; it is excluded"))
    for identity in class_names:
        if counts["validation"][identity] == 0:
            findings.append(_finding("identity_missing_in_validation", walks["train"].identity_dirs[identity],
                                     f"identity {identity!r} has no usable validation images; it is trained on "
                                     "but its accuracy is not measured"))
    return [it for it in usable if it[0].identity in classes], class_names


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------
def _report(manifest: Manifest, walks: dict[str, _Walk], findings: list[Finding], elapsed: float,
            settings: dict[str, Any]) -> dict[str, Any]:
    files_seen = sum(w.files_seen for w in walks.values())
    counts = {}
    for split, walk in walks.items():
        rows = manifest.split(split)
        counts[split] = {"files_seen": walk.files_seen, "images": len(rows),
                         "identities": len({r.identity for r in rows}), "identity_folders": len(walk.identity_dirs)}
    per_identity: dict[str, dict[str, int]] = {}
    for r in manifest.rows:
        per_identity.setdefault(r.identity, {"train": 0, "validation": 0})[r.split] += 1
    return {
        "ok": not any(f.severity == "error" for f in findings),
        "roots": dict(manifest.roots),
        "manifest_sha256": manifest.sha256,
        "n_classes": len(manifest.class_names),
        "counts": counts,
        "per_identity": dict(sorted(per_identity.items())),
        "findings_by_code": dict(sorted(Counter(f.code for f in findings).items())),
        "findings_by_severity": {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")},
        "findings": [f.to_dict() for f in findings],
        "settings": settings,
        "seconds": round(elapsed, 3),
        "files_per_second": round(files_seen / elapsed, 1) if elapsed > 0 else None,
    }


def render_markdown(report: dict[str, Any], max_per_code: int = 20, title: str = "Dataset validation",
                    codes: dict[str, tuple[str, str, str]] | None = None) -> str:
    """The report as Markdown: a summary table, then the findings grouped by code, each with its fix (from
    ``codes``, the findings' table: :data:`CODES` by default; the align step passes its own as well)."""
    fixes = {code: fix for code, (_, _, fix) in (CODES if codes is None else codes).items()}
    lines = [f"# {title}", ""]
    n_err = report["findings_by_severity"]["error"]
    lines.append("**Clean**: no file had to be excluded." if report["ok"] else
                  f"**{n_err} problem(s) found**; the files concerned were excluded (run with --strict to fail "
                  "instead).")
    lines += ["", f"{report['n_classes']} classes; manifest sha256 `{report['manifest_sha256'][:16]}`; "
              f"{report['seconds']} s ({report['files_per_second']} files/s).", "",
              "| split | root | identities | images used | files seen |", "|---|---|---|---|---|"]
    for split, c in report["counts"].items():
        lines.append(f"| {split} | `{report['roots'][split]}` | {c['identities']} | {c['images']} | "
                     f"{c['files_seen']} |")
    by_code: dict[str, list[dict[str, str]]] = defaultdict(list)
    for f in report["findings"]:
        by_code[f["code"]].append(f)
    if by_code:
        lines += ["", "## Findings", "", "| code | severity | action | count | fix |", "|---|---|---|---|---|"]
        order = {"error": 0, "warning": 1, "info": 2}
        codes = sorted(by_code, key=lambda c: (order[by_code[c][0]["severity"]], c))
        for code in codes:
            first = by_code[code][0]
            lines.append(f"| `{code}` | {first['severity']} | {first['action']} | {len(by_code[code])} | "
                         f"{fixes[code]} |")
        for code in codes:
            items = by_code[code]
            lines += ["", f"### `{code}` ({len(items)})", ""]
            lines += [f"- `{f['path']}`: {f['message']}" for f in items[:max_per_code]]
            if len(items) > max_per_code:
                lines.append(f"- ... and {len(items) - max_per_code} more (see report.json)")
    return "\n".join(lines) + "\n"


def _log_findings(findings: Iterable[dict[str, str]], per_code: int = 10) -> None:
    shown: Counter = Counter()
    hidden: Counter = Counter()
    for f in findings:
        if f["severity"] == "info":
            continue
        if shown[f["code"]] < per_code:
            shown[f["code"]] += 1
            log.warning("%s (%s, %s): %s: %s", f["code"], f["severity"], f["action"], f["path"], f["message"])
        else:
            hidden[f["code"]] += 1
    for code, n in sorted(hidden.items()):
        log.warning("%s: %d more like this (see report.json)", code, n)


def run_validation(train_data: str, validation_data: str, output_dir: str, n_classes: int | None = None,
                   min_images: int = 1, strict: bool = False) -> ValidationResult:
    """The validation step as the KFP component and ``arcface validate`` call it: check, log, write the files."""
    result = validate_dataset(train_data, validation_data, n_classes=n_classes, min_images=min_images,
                              strict=strict, output_dir=output_dir)
    report = result.report
    _log_findings(report["findings"])
    for split, c in report["counts"].items():
        log.info("%s: %d images of %d identities (%d files seen) in %s", split, c["images"], c["identities"],
                 c["files_seen"], report["roots"][split])
    log.info("%d classes; %d error(s), %d warning(s), %d info; %.1f s (%s files/s); manifest %s written to %s",
             report["n_classes"], report["findings_by_severity"]["error"], report["findings_by_severity"]["warning"],
             report["findings_by_severity"]["info"], report["seconds"], report["files_per_second"],
             report["manifest_sha256"][:16], output_dir)
    return result
