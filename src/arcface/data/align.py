"""Face detection and 5-point alignment: photos in, ArcFace face crops out, the same way at every entrance.

ArcFace models are trained and served on faces warped onto one fixed 5-point template (the eyes, the nose
tip, the mouth corners at :data:`TEMPLATE_112` in a 112x112 crop). This module finds the face and its five
points with MTCNN (the ``mtcnn`` package: TensorFlow, MIT licence, its weights ship inside the wheel, so
nothing is downloaded at run time), fits the least-squares similarity transform onto the template
(:func:`similarity_transform`, Umeyama's method) and warps the upright image with it (:func:`warp`).
:meth:`MtcnnDetector.detect` (batched) and :func:`align_detected` (choose and warp) are what every entrance runs,
through :func:`align_images` or, where a server detects several requests' photos in one call, one after the other:
the align step of the pipeline (:func:`run_alignment`), ``arcface embed/compare/search``, the server and the
evaluation of a pairs file (:class:`arcface.embedding.Embedder`).

Which face, when there are several (:func:`choose_face`): among the faces scored at least ``min_score``, the
largest box; boxes within 10 % of the largest area are a tie, and the one nearest the image centre wins.

The align step (:func:`run_alignment`) reads a validated manifest and writes an
:class:`arcface.contracts.AlignedDir`: the crops (PNG, named by the sha256 of the source image), a manifest
whose rows point at the crops (so training and evaluation read it exactly like the validate step's), the
alignment record of every source image (path, sha256, box, 5 points, score) and a report with the findings
(:data:`CODES`, the same shape as the validation report). The user's files are only ever opened for
reading. A re-run reuses the crop of every source whose content (sha256) was aligned before with the same
settings, from the cache folder it is given; a changed file has another sha256, so it is aligned again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from arcface import atomic
from arcface.choices import ALIGN_METHODS as METHODS
from arcface.contracts import AlignedDir, ManifestDir
from arcface.data.manifest import DataError, Manifest, ManifestRow
from arcface.data.validate import CODES as VALIDATION_CODES
from arcface.data.validate import Finding, render_markdown

log = logging.getLogger("arcface.align")

TEMPLATE_NAME = "arcface_5pt"
#: The ArcFace (insightface ``norm_crop``) template for a 112x112 crop: left eye, right eye (as seen in the
#: image), nose tip, left and right mouth corners; pixel-index coordinates (x, y).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
MIN_SCORE = 0.9  # MTCNN's final-stage confidence; frontal faces score > 0.99, its own cut-off is 0.8
MIN_FACE = 20  # pixels: the shorter side of the box below which a face carries too little detail
TIE = 0.9  # a face whose box has at least this fraction of the largest area ties with it
DETECT_MAX_SIDE = 1024  # detection runs on a copy at most this large (faster; the warp uses full resolution)
BATCH = 16  # images per MTCNN call (images of one size are batched together)

# code -> (severity, action, how to fix); severity 'error' excludes the image (and fails --strict).
CODES: dict[str, tuple[str, str, str]] = {
    "no_face": ("error", "excluded", "use a photo in which the face is visible, or train with --align none "
                                     "when the images are already face crops"),
    "low_score": ("error", "excluded", "check the image: the detector is unsure it shows a face (scores below "
                                       f"{MIN_SCORE}); use a clearer, more frontal photo"),
    "face_too_small": ("error", "excluded", f"use a photo where the face is at least {MIN_FACE} pixels across"),
    "several_faces": ("warning", "kept", "crop the photo to the one person, or check that the face kept (the "
                                         "largest, then the most central) is the right one"),
    "landmarks_outside": ("warning", "kept", "the face is cut by the image border (the crop is black there); "
                                             "use a photo that shows the whole face"),
    "empty_identity": ("error", "excluded", "add photos in which the face is found, or remove the identity"),
}


# ---------------------------------------------------------------------------------------------------
# Geometry: the template, the transform, the warp
# ---------------------------------------------------------------------------------------------------
def template(image_size: int = 112) -> np.ndarray:
    """The 5 template points for an ``image_size`` square crop (the 112 template scaled)."""
    return TEMPLATE_112 * (image_size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity (rotation, uniform scale, translation; no reflection) that maps the
    points ``src`` [N, 2] onto ``dst`` [N, 2] with the least squared error (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two [N, 2] point sets with N >= 2, got {src.shape} and {dst.shape}")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mean_src, dst - mean_dst
    covariance = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(covariance)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])  # no reflection
    rotation = u @ d @ vt
    variance = (a ** 2).sum() / len(src)
    if variance <= 0:
        raise ValueError("the source points all coincide; a similarity transform is undefined")
    scale = float(np.trace(np.diag(s) @ d) / variance)
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def warp(image: np.ndarray, matrix: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3]: output pixel p shows input point ``matrix^-1 p`` (bilinear; black
    outside the image). Coordinates are pixel indices (pixel i's centre at i), as the template's are."""
    from PIL import Image

    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    # Pillow samples input (A (x + 0.5) + c) - 0.5 for output index x (pixel-area coordinates); choose c so
    # that this is inverse @ (x, 1) in index coordinates.
    linear, shift = inverse[:, :2], inverse[:, 2]
    offset = shift - linear @ np.array([0.5, 0.5]) + 0.5
    data = (linear[0, 0], linear[0, 1], offset[0], linear[1, 0], linear[1, 1], offset[1])
    warped = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).transform(
        (image_size, image_size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(warped, dtype=np.uint8)


def align_face(image: np.ndarray, points: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The crop of ``image`` whose 5 ``points`` land on the template: uint8 [S, S, 3]."""
    return warp(image, similarity_transform(points, template(image_size)), image_size)


# ---------------------------------------------------------------------------------------------------
# Detection and the choice of face
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the upright image
    score: float
    points: tuple[tuple[float, float], ...]  # left eye, right eye, nose, left and right mouth corners

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class MtcnnDetector:
    """MTCNN from the ``mtcnn`` package, loaded on first use; images of one size are detected in batches."""

    name = "mtcnn"

    def __init__(self, batch_size: int = BATCH, max_side: int = DETECT_MAX_SIDE) -> None:
        self.batch_size, self.max_side = batch_size, max_side
        self._model = None

    @property
    def version(self) -> str:
        return f"mtcnn {importlib.metadata.version('mtcnn')}"

    def _detector(self):
        if self._model is None:
            try:
                from mtcnn import MTCNN
            except ImportError:
                raise DataError("face alignment needs the mtcnn package (pip install mtcnn), or pass --align none "
                                "when the images are already face crops") from None
            self._model = MTCNN()
        return self._model

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """The faces found in each uint8 [H, W, 3] image (coordinates in that image)."""
        shrunk = [self._shrink(image) for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (small, _) in enumerate(shrunk):
            by_shape[small.shape].append(i)
        faces: list[list[Face]] = [[] for _ in images]
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                rows = self._detector().detect_faces([shrunk[i][0] for i in chunk], output_type="numpy",
                                                     box_format="xyxy")
                for row in np.asarray(rows, np.float64).reshape(-1, 16):
                    i = chunk[int(row[0])]
                    k = shrunk[i][1]  # back to the full-resolution image
                    faces[i].append(Face(box=tuple(float(v) * k for v in row[1:5]), score=float(row[5]),
                                         points=tuple((float(x) * k, float(y) * k)
                                                      for x, y in zip(row[6:11], row[11:16], strict=True))))
        return faces

    def _shrink(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        if max(height, width) <= self.max_side:
            return image, 1.0
        from PIL import Image

        k = max(height, width) / self.max_side
        size = (max(1, round(width / k)), max(1, round(height / k)))
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)), k


def choose_face(faces: Sequence[Face], width: int, height: int, min_score: float = MIN_SCORE) -> Face | None:
    """The face to keep: the largest box among those scored >= ``min_score``; boxes within :data:`TIE` of the
    largest area tie, and the one whose centre is nearest the image centre wins. None when none qualifies."""
    candidates = [f for f in faces if f.score >= min_score]
    if not candidates:
        return None
    largest = max(f.area for f in candidates)
    tied = [f for f in candidates if f.area >= TIE * largest]

    def off_centre(f: Face) -> float:
        return np.hypot((f.box[0] + f.box[2]) / 2 - width / 2, (f.box[1] + f.box[3]) / 2 - height / 2)

    return min(tied, key=lambda f: (off_centre(f), -f.score))


@dataclasses.dataclass
class Alignment:
    """What alignment made of one image: the crop (None when excluded), the face kept, the findings."""

    crop: np.ndarray | None
    face: Face | None
    faces: int
    findings: list[tuple[str, str]]  # (code, message)

    @property
    def usable(self) -> bool:
        return self.crop is not None


def judge(faces: Sequence[Face], width: int, height: int, min_score: float = MIN_SCORE,
          min_face: int = MIN_FACE) -> tuple[Face | None, list[tuple[str, str]]]:
    """The face to keep (None: excluded) and the findings, by the rules of :data:`CODES`."""
    if not faces:
        return None, [("no_face", "no face found")]
    face = choose_face(faces, width, height, min_score)
    if face is None:
        best = max(f.score for f in faces)
        return None, [("low_score", f"{len(faces)} face(s) found, the best scored {best:.3f} < {min_score}")]
    findings = []
    qualified = sum(f.score >= min_score for f in faces)
    if qualified > 1:
        x1, y1, x2, y2 = (round(v) for v in face.box)
        findings.append(("several_faces", f"{qualified} faces found; kept the one at x={x1}..{x2}, y={y1}..{y2} "
                                          "(largest, then most central)"))
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    if side < min_face:
        return None, [*findings, ("face_too_small", f"the face is {side:.0f} pixels across, fewer than {min_face}")]
    outside = [i for i, (x, y) in enumerate(face.points) if not (0 <= x <= width - 1 and 0 <= y <= height - 1)]
    if outside:
        findings.append(("landmarks_outside", f"{len(outside)} of the 5 face points lie outside the "
                                              f"{width}x{height} image"))
    return face, findings


def upright_image(contents: bytes, orientation: int | None = None) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, 3], EXIF orientation applied: the decoding ``model_input`` does."""
    import tensorflow as tf

    from arcface.data.preprocess import apply_orientation, decode_image, exif_orientation

    tensor = tf.constant(contents)
    if orientation is None:
        orientation = exif_orientation(tensor)
    return apply_orientation(decode_image(tensor), orientation).numpy()


def align_images(images: Sequence[np.ndarray], image_size: int = 112, detector: MtcnnDetector | None = None,
                 min_score: float = MIN_SCORE, min_face: int = MIN_FACE) -> list[Alignment]:
    """Detect (batched), choose and warp: one :class:`Alignment` per upright uint8 image."""
    detector = detector or default_detector()
    return [align_detected(image, faces, image_size, min_score, min_face)
            for image, faces in zip(images, detector.detect(images), strict=True)]


def align_detected(image: np.ndarray, faces: Sequence[Face], image_size: int = 112, min_score: float = MIN_SCORE,
                   min_face: int = MIN_FACE) -> Alignment:
    """Choose among the faces detected in ``image`` and warp the chosen one: a server detects many requests'
    photos in one detector call, then finishes each photo here."""
    height, width = image.shape[:2]
    face, findings = judge(faces, width, height, min_score, min_face)
    crop = align_face(image, np.array(face.points), image_size) if face is not None else None
    return Alignment(crop, face, len(faces), findings)


_DETECTOR: MtcnnDetector | None = None


def default_detector() -> MtcnnDetector:
    """One detector per process: MTCNN's three networks are built once."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = MtcnnDetector()
    return _DETECTOR


def encode_png(crop: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def inputs_from_alignments(images: Sequence[np.ndarray], alignments: Sequence[Alignment], names: Sequence[str],
                           image_size: int, center_crop: float = 1.0, *, whole_image_fallback: bool = False,
                           error: Callable[[str], Exception] = DataError) -> tuple[np.ndarray, dict[str, str]]:
    """Upright photos and their alignments -> the model inputs [N, S, S, 3]: each crop through the pixels of
    ``model_input``, so equal to what training reads from the align step's lossless PNG of it.

    A photo whose face is excluded raises ``error`` naming the file, the finding and the fix; with
    ``whole_image_fallback`` it is fed whole instead (as with --align none) and returned in the second value,
    {name: 'code: message'}, so the caller reports it.
    """
    from arcface.data.preprocess import decoded_model_input

    inputs, not_aligned = [], {}
    for name, image, result in zip(names, images, alignments, strict=True):
        if not result.usable:
            code, message = result.findings[-1]
            if not whole_image_fallback:
                raise error(f"{name}: {code}: {message}; {CODES[code][2]} (or pass --align none to use the "
                            "whole image)")
            not_aligned[name] = f"{code}: {message}"
        source = result.crop if result.usable else image
        inputs.append(decoded_model_input(source, image_size, center_crop).numpy())
    return np.stack(inputs), not_aligned


# ---------------------------------------------------------------------------------------------------
# The align step: a validated manifest in, crops + an aligned manifest out
# ---------------------------------------------------------------------------------------------------
def settings(image_size: int, detector: MtcnnDetector, min_score: float = MIN_SCORE,
             min_face: int = MIN_FACE) -> dict[str, Any]:
    """What a crop depends on besides its source bytes: a cached crop is reused only under equal settings."""
    return {"method": "mtcnn", "detector": detector.version, "template": TEMPLATE_NAME, "image_size": image_size,
            "min_score": min_score, "min_face": min_face,
            "rule": "largest box scored >= min_score; within 10% of the largest area, the most central"}


def _record(source: str, sha256: str, result: Alignment, crop_name: str | None) -> dict[str, Any]:
    face = result.face
    return {"source": source, "sha256": sha256, "crop": crop_name, "faces": result.faces,
            "box": [round(v, 2) for v in face.box] if face else None,
            "points": [[round(x, 2), round(y, 2)] for x, y in face.points] if face else None,
            "score": round(face.score, 5) if face else None,
            "findings": [list(f) for f in result.findings]}


def _cached_records(cache_dir: str | None, wanted: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The reusable records of ``cache_dir`` (an earlier align output or cache folder) and its crops folder."""
    if not cache_dir or not AlignedDir.has_records(cache_dir):
        return {}, None
    document = AlignedDir.read_records(cache_dir)
    if document.get("settings") != wanted:
        log.info("align cache %s was written with other settings (%s); aligning everything again", cache_dir,
                 document.get("settings"))
        return {}, None
    crops = AlignedDir.crops_dir(cache_dir)
    usable = {sha: r for sha, r in document.get("images", {}).items()
              if r.get("crop") is None or os.path.isfile(os.path.join(crops, r["crop"]))}
    return usable, crops


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _finding(code: str, path: str, message: str) -> Finding:
    severity, action, _ = CODES[code]
    return Finding(code=code, severity=severity, path=path, message=message, action=action)


@dataclasses.dataclass
class AlignResult:
    manifest: Manifest
    records: dict[str, Any]  # the alignment.json document
    report: dict[str, Any]
    ok: bool
    aligned: int  # images run through the detector in this run
    reused: int  # images whose record (and crop) came from the cache

    def markdown(self) -> str:
        """report.md (:class:`arcface.contracts.AlignedDir` writes it); a code both steps define (empty_identity)
        gets the validation's fix, as the align step's report always did."""
        return render_markdown(self.report, title="Face alignment", codes={**CODES, **VALIDATION_CODES})


def align_manifest(manifest: Manifest, output_dir: str, *, image_size: int = 112, cache_dir: str | None = None,
                   strict: bool = False, n_classes: int | None = None, detector: MtcnnDetector | None = None,
                   batch: int = 64, write_cache: bool = True) -> AlignResult:
    """Align every image of ``manifest`` into ``output_dir`` (an :class:`arcface.contracts.AlignedDir`).

    Excluded images and identities left without training images are findings (see :data:`CODES`);
    ``strict=True`` raises :class:`DataError` listing them. ``cache_dir`` (an earlier output, or a folder this
    function also writes its new crops and records into) supplies the crops of contents aligned before;
    ``write_cache=False`` only reads it (a folder another process owns, e.g. the chief worker's).
    """
    started = time.perf_counter()
    detector = detector or default_detector()
    wanted = settings(image_size, detector)
    _check_output_outside_data(manifest, output_dir)
    cached, cache_crops = _cached_records(cache_dir, wanted)
    crops_dir = AlignedDir.crops_dir(output_dir)
    os.makedirs(crops_dir, exist_ok=True)
    sources = {split: dict(zip((r.path for r in manifest.split(split)), manifest.absolute_paths(split),
                               strict=True)) for split in manifest.roots}
    records = _reuse_cached(manifest, cached, cache_crops, crops_dir, sources)
    reused = len(records)
    todo = [row for row in manifest.rows if row.sha256 not in cached]
    for start in range(0, len(todo), batch):
        _align_rows(todo[start:start + batch], sources, image_size, detector, crops_dir, records)
        log.info("aligned %d/%d images", min(start + batch, len(todo)), len(todo))

    result = _aligned_result(manifest, records, wanted, output_dir, strict, n_classes, started,
                             aligned=len(todo), reused=reused)
    AlignedDir.write(output_dir, result)
    if write_cache and cache_dir and os.path.realpath(cache_dir) != os.path.realpath(output_dir):
        AlignedDir.update_cache(cache_dir, output_dir, result.records)
    return result


def _check_output_outside_data(manifest: Manifest, output_dir: str) -> None:
    for split, root in manifest.roots.items():
        out, real = os.path.realpath(output_dir), os.path.realpath(root)
        if out == real or out.startswith(real + os.sep):
            raise DataError(f"output folder {output_dir} is inside the {split} data folder {root}: alignment never "
                            "writes into the dataset. Pass an output folder outside it")


def _reuse_cached(manifest: Manifest, cached: dict[str, dict[str, Any]], cache_crops: str | None, crops_dir: str,
                  sources: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """The records (and crops, copied into ``crops_dir``) of the rows whose contents were aligned before."""
    records = {}
    for row in manifest.rows:
        if row.sha256 in cached:
            record = {**cached[row.sha256], "source": sources[row.split][row.path]}
            if record["crop"]:
                target = os.path.join(crops_dir, record["crop"])
                if not os.path.isfile(target):
                    with open(os.path.join(cache_crops, record["crop"]), "rb") as f:
                        _write_file(target, f.read())
            records[row.sha256] = record
    return records


def _align_rows(rows: list[ManifestRow], sources: dict[str, dict[str, str]], image_size: int,
                detector: MtcnnDetector, crops_dir: str, records: dict[str, dict[str, Any]]) -> None:
    """Detect and warp one batch of rows (the files only read, and checked against validation's sha256)."""
    images = []
    for row in rows:
        with open(sources[row.split][row.path], "rb") as f:
            contents = f.read()
        if hashlib.sha256(contents).hexdigest() != row.sha256:
            raise DataError(f"{sources[row.split][row.path]} changed since validation (its sha256 differs "
                            "from the manifest's); run the validate step again")
        images.append(upright_image(contents, row.orientation))
    for row, result in zip(rows, align_images(images, image_size, detector), strict=True):
        name = None
        if result.usable:
            name = f"{row.sha256[:2]}/{row.sha256}.png"
            _write_file(os.path.join(crops_dir, name), encode_png(result.crop))
        records[row.sha256] = _record(sources[row.split][row.path], row.sha256, result, name)


def _aligned_result(manifest: Manifest, records: dict[str, dict[str, Any]], wanted: dict[str, Any], output_dir: str,
                    strict: bool, n_classes: int | None, started: float, aligned: int, reused: int) -> AlignResult:
    findings, per_identity, kept = _findings_and_crops(manifest, records, wanted["image_size"],
                                                       AlignedDir.crops_dir(output_dir))
    train_left = {r.identity for r in kept if r.split == "train"}
    class_names = [name for name in manifest.class_names if name in train_left]
    findings += _emptied_identities(manifest, kept, class_names, per_identity)
    kept = [r for r in kept if r.identity in class_names]
    aligned_manifest = Manifest(rows=kept, roots={split: AlignedDir.crops_dir(output_dir) for split in manifest.roots},
                                class_names=class_names,
                                alignment={k: wanted[k] for k in ("method", "detector", "template", "image_size")})
    errors = [f for f in findings if f.severity == "error"]
    _refuse_unusable(manifest, aligned_manifest, class_names, n_classes, errors if strict else None)
    elapsed = time.perf_counter() - started
    counts = {split: {"files_seen": len(manifest.split(split)), "images": len(aligned_manifest.split(split)),
                      "identities": len(aligned_manifest.identities(split)),
                      "identity_folders": len(manifest.identities(split))} for split in manifest.roots}
    report = {
        "ok": not errors, "roots": dict(aligned_manifest.roots), "source_roots": dict(manifest.roots),
        "manifest_sha256": aligned_manifest.sha256, "source_manifest_sha256": manifest.sha256,
        "n_classes": len(class_names), "counts": counts, "settings": wanted,
        "findings_by_code": dict(sorted(Counter(f.code for f in findings).items())),
        "findings_by_severity": {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")},
        "findings_by_identity": {k: dict(sorted(v.items())) for k, v in sorted(per_identity.items())},
        "findings": [f.to_dict() for f in findings],
        "aligned": aligned, "reused": reused, "seconds": round(elapsed, 3),
        "files_per_second": round(len(manifest.rows) / elapsed, 1) if elapsed > 0 else None,
    }
    return AlignResult(aligned_manifest, {"settings": wanted, "images": records}, report, not errors, aligned, reused)


def _findings_and_crops(manifest: Manifest, records: dict[str, dict[str, Any]], size: int, crops_dir: str
                        ) -> tuple[list[Finding], dict[str, Counter], list[ManifestRow]]:
    """Each row's findings (counted per identity too), and a manifest row for each crop."""
    findings: list[Finding] = []
    per_identity: dict[str, Counter] = defaultdict(Counter)
    kept: list[ManifestRow] = []
    for row in manifest.rows:
        record = records[row.sha256]
        for code, message in record["findings"]:
            findings.append(_finding(code, record["source"], message))
            per_identity[row.identity][code] += 1
        if record["crop"]:
            with open(os.path.join(crops_dir, record["crop"]), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            kept.append(ManifestRow(path=record["crop"], identity=row.identity, split=row.split, width=size,
                                    height=size, sha256=digest))
    return findings, per_identity, kept


def _emptied_identities(manifest: Manifest, kept: list[ManifestRow], class_names: list[str],
                        per_identity: dict[str, Counter]) -> list[Finding]:
    """A finding for each identity of a split none of whose images could be aligned."""
    findings = []
    for split in manifest.roots:
        before = Counter(r.identity for r in manifest.split(split))
        after = Counter(r.identity for r in kept if r.split == split)
        for identity in sorted(before):
            if after[identity] == 0 and (split == "train" or identity in class_names):
                what = "it is no longer a class" if split == "train" else "its accuracy is not measured"
                findings.append(_finding("empty_identity", os.path.join(manifest.roots[split], identity),
                                         f"identity {identity!r} in the {split} split: none of its "
                                         f"{before[identity]} image(s) could be aligned; {what}"))
                per_identity[identity]["empty_identity"] += 1
    return findings


def _refuse_unusable(manifest: Manifest, aligned: Manifest, class_names: list[str], n_classes: int | None,
                     strict_errors: list[Finding] | None) -> None:
    """DataError when the aligned data cannot train (an empty split, another class count), or, in strict mode
    (``strict_errors`` not None), when any image was excluded."""
    fatal = [f"the {split} split has no aligned images left" for split in manifest.roots if not aligned.split(split)]
    if n_classes is not None and n_classes != len(class_names):
        fatal.append(f"--n_classes={n_classes} but {len(class_names)} identities have aligned training images; "
                     f"pass --n_classes={len(class_names)}, or add photos where the face is found")
    if fatal or strict_errors:
        problems = [f"{f.code}: {f.path}: {f.message} (fix: {CODES[f.code][2]})" for f in strict_errors or []]
        header = "alignment failed strict mode" if strict_errors else "the aligned dataset cannot be used"
        raise DataError(f"{header}:\n  - " + "\n  - ".join(fatal + problems)
                        + ("\n(run without --strict to exclude these images with a warning)" if problems else ""))


def run_alignment(manifest_dir: str, output_dir: str, *, method: str = "mtcnn", image_size: int = 112,
                  cache_dir: str | None = None, strict: bool = False, n_classes: int | None = None,
                  write_cache: bool = True) -> Manifest:
    """The align step as the component, ``arcface align`` and ``arcface train`` call it; returns the manifest
    written. ``cache_dir`` may be ``output_dir`` itself: a rerun into the same folder reuses its crops.

    ``method='none'`` passes the validated manifest and its report through unchanged (pre-aligned data).
    """
    if method not in METHODS:
        raise DataError(f"--align={method!r} is unknown; choose one of: {', '.join(METHODS)}")
    if method == "none":
        return AlignedDir.pass_through(manifest_dir, output_dir)
    result = align_manifest(ManifestDir.read(manifest_dir), output_dir, image_size=image_size, cache_dir=cache_dir,
                            strict=strict, n_classes=n_classes, write_cache=write_cache)
    report = result.report
    for f in report["findings"][:20]:
        if f["severity"] != "info":
            log.warning("%s (%s, %s): %s: %s", f["code"], f["severity"], f["action"], f["path"], f["message"])
    log.info("aligned %d image(s), reused %d from the cache; %d train / %d validation crops of %d classes; "
             "%s; %.1f s", result.aligned, result.reused, report["counts"]["train"]["images"],
             report["counts"]["validation"]["images"], report["n_classes"],
             ", ".join(f"{code} {n}" for code, n in report["findings_by_code"].items()) or "no findings",
             report["seconds"])
    return result.manifest
