"""``sameid build``: a tagged or labelled image collection in, a same-identity dataset dir out.

The flow (docs/architecture.md; RetriBooru RetriBooru, arXiv 2312.02521, §3 and appendix A.1; face grouping and
cleaning after Hybrid Generative Fusion, arXiv 2508.10672)::

    read source -> tag filters -> resolve paths -> annotate (per image, resumable shards)
                -> group (tags: character|artist|outfit answer ; faces: embedding clusters)
                -> clean (near-duplicates, identities with one image) -> write dataset dir

Only the annotate stage touches pixels; it runs in-process, in a process pool (``engine="local"``) or on Ray Data
(``engine="ray"``) over the same plain function, and stores its results shard by shard so ``resume`` continues a
killed run and ends with the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import write_json_atomic, write_parquet_atomic
from ..errors import SameIdError
from ..images import MISSING
from ..records import DATASET_SETTINGS_FILE, MANIFEST_COLUMNS
from ..sources import read_source
from ..verbosity import get_verbosity
from .annotate import ANNOTATION_COLUMNS, AnnotateConfig, annotate_rows
from .clean import DEFAULT_NEAR_DUPLICATE_BITS, drop_unreferenceable
from .cluster import JUDGE_CLEAR_FRACTION, JUDGE_MARGIN
from .filters import FilterConfig, apply_tag_filters
from .writer import OutputPlan, plan_output

GROUPINGS = ("tags", "faces")
ENGINES = ("local", "ray")
#: How given identity labels are checked with ``faces`` grouping: ``faces`` cleans every label's images by face
#: clustering (an image without a face is rejected); ``trust`` keeps labels as given; ``auto`` checks a label's
#: images by their faces when faces are found in at least :data:`FACE_LABEL_FRACTION` of them (people) and
#: trusts it otherwise (characters, pets, objects: subjects without a face the embedder knows).
LABEL_CHECKS = ("auto", "faces", "trust")
FACE_LABEL_FRACTION = 0.5

#: Default backends per grouping: drawn figures (Danbooru) vs photos of people.
DEFAULT_BACKENDS = {
    "tags": {"head_detector": "mask-top", "segmenter": "border-colors", "vqa": "pixel-colors", "face_embedder": None},
    "faces": {"head_detector": "mediapipe", "segmenter": "mediapipe-selfie", "vqa": None, "face_embedder": "dlib"},
}

UNMATCHED_ANSWER = "unmatched VQA answer"
NO_FACE = "no face found"
IDENTITY_OUTLIER = "identity outlier"
NO_MATCH = "no same-identity match"
DUPLICATE_ID = "duplicate id"
#: The judge of doubtful folders (``--judge``): rejected reason, and ``judge_verdict`` values of kept rows.
JUDGE_REJECTED = "judge: not the same person"
JUDGE_SAME = "same person"
JUDGE_RESCUED = "same person (a clustering outlier)"
JUDGE_FAILED = "no verdict: the clustering decided"

REJECTED_SCHEMA = pa.schema([
    ("id", pa.string()), ("image", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()),
])


@dataclass
class BuildConfig:
    """Everything that decides the content of a built dataset (``config.json`` of the run)."""

    source: str
    out: str
    source_format: str | None = None
    image_root: str | None = None
    layout: str = "auto"  # Danbooru image layout: auto | flat | original | 512px | cdn
    grouping: str | None = None
    head_detector: str | None = None
    segmenter: str | None = None
    vqa: str | None = None
    face_embedder: str | None = None
    unwanted_tags: list[str] | None = None
    clothing_vocabulary: str | None = None
    near_duplicate_bits: int = DEFAULT_NEAR_DUPLICATE_BITS
    face_eps: float | None = None
    face_main_fraction: float = 0.6
    face_clustering: str = "dbscan"
    min_samples: int = 2
    label_check: str = "auto"
    # Mixture-of-experts cleaning (faces grouping): a judge backend spec for the doubtful labels, and the doubt margins.
    judge: str | None = None
    judge_margin: float = JUDGE_MARGIN
    judge_clear_fraction: float = JUDGE_CLEAR_FRACTION
    reject_monochrome: bool = True
    answer_matching: str = "strict"  # outfit answers: strict (A.1) | color-family
    allow_no_artist: bool = False  # tag grouping: keep posts without an artist tag (grouped as "(unknown artist)")
    # Multi-subject samples (docs/multi_subject.md): 1 keeps single-character posts only (RetriBooru A.1); K >= 2
    # also keeps posts of 2..K characters (tags grouping) or photos with 2..K faces (faces grouping), each figure
    # or face assigned to a single-subject identity (dataset/subjects.py).
    max_subjects: int = 1
    subject_descriptor: str | None = None  # tags: colors (default) | image:<image embedder spec>; faces: faces
    subject_min_similarity: float | None = None  # default: 0.6 (colour signatures) or 0.912 (dlib faces)
    subject_min_margin: float = 0.05
    shard_size: int = 32
    # How to run, not what to build: excluded from the resume check.
    engine: str = "local"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    export_hf: str | None = None
    judge_cache: str | None = None  # verdict cache folder (default ~/.cache/sameid/judge)
    is_generated_sample: bool = False

    def resolved(self) -> BuildConfig:
        """Fill format, grouping and backend defaults, and check the choices."""
        from ..sources import detect_format

        config = BuildConfig(**asdict(self))
        config.source = str(Path(config.source).resolve())
        config.source_format = config.source_format or detect_format(config.source)
        if config.grouping is None:
            config.grouping = "tags" if config.source_format == "danbooru" else "faces"
        if config.grouping not in GROUPINGS:
            raise SameIdError(f"unknown grouping {config.grouping!r}; choose one of {', '.join(GROUPINGS)}")
        if config.face_clustering not in ("dbscan", "hdbscan"):
            raise SameIdError(f"unknown face clustering {config.face_clustering!r}; choose dbscan or hdbscan")
        if config.label_check not in LABEL_CHECKS:
            raise SameIdError(f"unknown label check {config.label_check!r}; choose one of {', '.join(LABEL_CHECKS)}")
        from .outfits import ANSWER_MATCHINGS

        if config.answer_matching not in ANSWER_MATCHINGS:
            raise SameIdError(f"unknown answer matching {config.answer_matching!r}; choose one of "
                              f"{', '.join(ANSWER_MATCHINGS)}")
        if config.engine not in ENGINES:
            raise SameIdError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
        for name, default in DEFAULT_BACKENDS[config.grouping].items():
            value = getattr(config, name)
            if value is None:
                setattr(config, name, default)
            elif value in ("none", ""):
                setattr(config, name, None)
        if config.grouping == "tags" and not config.vqa:
            raise SameIdError("grouping 'tags' needs a VQA backend (--vqa pixel-colors or --vqa transformers:<id>)")
        if config.vqa and config.vqa.startswith("transformers:"):
            from ..backends.vqa import parse_model_spec

            parse_model_spec(config.vqa.partition(":")[2])  # a bad ?max_new_tokens= fails before anything is read
        if config.grouping == "faces" and not config.face_embedder:
            raise SameIdError("grouping 'faces' needs a face embedder (--face-embedder dlib or arcface-onnx:<path>)")
        from ..backends.registry import available_backends

        if config.judge in ("none", ""):
            config.judge = None
        if config.judge is not None:
            if config.grouping != "faces":
                raise SameIdError("--judge judges face clusters: it needs grouping 'faces'")
            if not 0.0 < config.judge_clear_fraction <= 1.0:
                raise SameIdError(f"--judge-clear-fraction must be in (0, 1], not {config.judge_clear_fraction!r}")
            if not (np.isfinite(config.judge_margin) and 0.0 <= config.judge_margin < 2.0):
                raise SameIdError(f"--judge-margin must be a cosine distance in [0, 2), not {config.judge_margin!r}")
        for kind in ("head_detector", "segmenter", "vqa", "face_embedder", "judge"):
            spec = getattr(config, kind)
            if spec and spec.partition(":")[0] not in available_backends(kind):
                raise SameIdError(f"unknown {kind.replace('_', ' ')} backend {spec!r}; choose one of: "
                                  f"{', '.join(available_backends(kind))} (or none)")
        from ..sources.danbooru_layouts import LAYOUTS

        if config.layout not in LAYOUTS:
            raise SameIdError(f"unknown Danbooru layout {config.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if config.source_format == "danbooru" and config.image_root is None:
            config.image_root = str(Path(config.source).parent)
        if config.image_root is not None:
            config.image_root = str(Path(config.image_root).resolve())
        if config.workers < 1 or config.shard_size < 1:
            raise SameIdError("--workers and --shard-size must be at least 1")
        _resolve_subject_settings(config)
        config.subject_config()  # checks the multi-subject settings
        return config

    def subject_config(self):
        from .subjects import SubjectConfig

        return SubjectConfig(max_subjects=self.max_subjects, descriptor=self.subject_descriptor,
                             min_similarity=self.subject_min_similarity, min_margin=self.subject_min_margin)

    def content_dict(self) -> dict:
        content = asdict(self)
        for key in ("engine", "workers", "export_hf", "out", "judge_cache"):
            content.pop(key)
        if content["max_subjects"] == 1:  # without multi-subject samples these decide nothing: recorded as builds
            # recorded them before photos had their own defaults (faces, 0.912), so those builds resume
            content["subject_descriptor"], content["subject_min_similarity"] = "colors", 0.6
        if content["judge"] is None:  # without a judge its margins decide nothing (and older builds resume)
            for key in ("judge", "judge_margin", "judge_clear_fraction"):
                content.pop(key)
        return content


@dataclass
class BuildResult:
    out: Path
    manifest: pd.DataFrame
    rejected: pd.DataFrame
    stats: dict
    hf_dataset: Path | None = None

    def describe(self) -> list[str]:
        identities = self.manifest["identity"].nunique() if len(self.manifest) else 0
        lines = [f"kept {len(self.manifest)} images in {identities} identities; rejected {len(self.rejected)} "
                 "(reasons in rejected.parquet)",
                 f"dataset: {self.out}",
                 f"  manifest: {self.out / 'manifest.parquet'}",
                 f"  card:     {self.out / 'README.md'} (datasets.load_dataset reads the manifest from it)"]
        if self.hf_dataset is not None:
            lines.append(f"  datasets: {self.hf_dataset} (datasets.load_from_disk)")
        return lines


def build_dataset(config: BuildConfig, *, resume: bool = False, overwrite: bool = False,
                  progress: bool = True) -> BuildResult:
    """Build the dataset dir described in docs/architecture.md ("Contracts") from ``config.source``.

    The source is read, filtered and checked before anything is written, and a build that replaces an earlier
    dataset (``overwrite``) is made beside it and swapped in at the end (:mod:`.writer`): a bad input or a
    failed build leaves the earlier dataset as it was.
    """
    config = config.resolved()
    out = Path(config.out).resolve()
    hf_target = None if config.export_hf is None else Path(config.export_hf).resolve()
    if hf_target is not None and hf_target.exists() and any(hf_target.iterdir()):
        raise SameIdError(f"{hf_target} is not empty; choose another --export-hf folder")
    plan = plan_output(out, config.content_dict(), resume=resume, overwrite=overwrite)

    source = read_source(config.source, config.source_format)
    rejected = [_rejected_frame(source.rejected, "source")]
    table, duplicates = _drop_duplicate_ids(source.table)
    rejected.append(duplicates)
    if table.num_rows == 0:
        raise SameIdError(f"{config.source}: no rows to build from{_counted(source.rejected, ' (rejected: ', ')')}; "
                          "check that it is the right file")
    kept, filtered_out = _apply_filters(table, config)
    filtered = filtered_out.select(["id", "reason", "detail"]).to_pandas()
    rejected.append(_rejected_frame(filtered, "filter"))
    if kept.num_rows == 0:
        raise SameIdError(f"{config.source}: every one of its {table.num_rows} rows is filtered out "
                          f"{_counted(filtered, '(', ')')}; see docs/build.md, Filters (--unwanted-tag, "
                          "--clothing-vocabulary, --allow-no-artist)")
    if config.source_format == "danbooru":
        from ..sources.danbooru import resolve_danbooru_images

        kept = resolve_danbooru_images(kept, config.image_root, config.layout)
    _check_some_image_exists(kept, config)
    judge = None
    if config.judge is not None:  # a judge that cannot be made (no key, no model) stops the build before it writes
        from ..backends.registry import create_backend

        judge = create_backend("judge", config.judge)

    try:
        return _build(config, plan, kept, table, rejected, hf_target, progress, judge)
    except OSError as exc:
        where = exc.filename or plan.build_dir
        kept_note = f"; the earlier dataset in {out} is unchanged" if plan.staged else ""
        raise SameIdError(f"cannot write the dataset: {where}: {exc.strerror or exc}{kept_note}; "
                          "free space or choose a writable --out") from None


def _build(config: BuildConfig, plan: OutputPlan, kept: pa.Table, table: pa.Table, rejected: list[pd.DataFrame],
           hf_target: Path | None, progress: bool, judge=None) -> BuildResult:
    out, build_dir = plan.out, plan.build_dir
    work = plan.start()
    annotate_config = AnnotateConfig(
        grouping=config.grouping, head_detector=config.head_detector, segmenter=config.segmenter,
        vqa=config.vqa if config.grouping == "tags" else None,
        face_embedder=config.face_embedder if config.grouping == "faces" else None,
        dataset_dir=str(build_dir), reject_monochrome=config.reject_monochrome,
    )
    if config.max_subjects > 1 and config.grouping == "faces":
        annotate_config = replace(annotate_config, all_faces=True)
    annotations = _annotate(kept, annotate_config, config, work, progress=progress)

    # The annotation row supersedes the source's own head box, mask and size (it used them when given).
    rows = kept.drop_columns(["head_box", "mask", "width", "height"]).to_pandas()
    rows = rows.merge(annotations, on="id", how="left", validate="one_to_one")
    if "image_not_found" in rows:  # Danbooru: a file under no layout is rejected with the paths tried
        tried = rows["image_not_found"].notna() & (rows["reason"] == MISSING)
        rows.loc[tried, "detail"] = rows.loc[tried, "image_not_found"]
    bad = rows["status"] != "ok"
    if bad.all():
        reasons = rows["reason"].value_counts()
        first = rows["image"].iloc[0]
        hint = "; check --image-root" if config.source_format == "danbooru" else ""
        raise SameIdError(f"no usable image among {len(rows)} rows of {config.source} "
                          f"({', '.join(f'{reason}: {n}' for reason, n in reasons.items())}; first: {first}){hint}")
    rejected.append(_rejected_frame(rows.loc[bad, ["id", "image", "reason", "detail"]], "annotate"))
    rows = rows.loc[~bad].reset_index(drop=True)

    multi = _multi_subject_candidates(rows, config)
    multi_rows, rows = rows.loc[multi].reset_index(drop=True), rows.loc[~multi].reset_index(drop=True)
    if config.grouping == "tags":
        rows, not_grouped = _group_by_outfit(rows, config.answer_matching)
        judge_summary = {}
    else:
        rows, not_grouped, judge_summary = _group_by_face(rows, config, judge)
    rejected.append(_rejected_frame(not_grouped, "group"))

    rows, unreferenceable = drop_unreferenceable(rows, config.near_duplicate_bits)
    rejected.append(_rejected_frame(unreferenceable, "clean"))

    manifest = _manifest(rows, out)
    if config.max_subjects > 1:
        from .subjects import append_subject_rows, assign_drawn_subjects, assign_photo_subjects

        if config.grouping == "tags":
            multi_rows["artist"] = [_artist_key(a) for a in multi_rows["artists"]]
            assigned, not_assigned = assign_drawn_subjects(multi_rows, rows, build_dir, config.subject_config(),
                                                           config.near_duplicate_bits)
        else:
            assigned, not_assigned = assign_photo_subjects(multi_rows, rows, build_dir, config.subject_config(),
                                                           config.near_duplicate_bits)
        rejected.append(_rejected_frame(not_assigned, "group"))
        manifest = append_subject_rows(manifest, assigned, out)
    rejected_frame = _finish_rejected(rejected, table)
    write_parquet_atomic(build_dir / "manifest.parquet", manifest)
    write_parquet_atomic(build_dir / "rejected.parquet",
                         pa.Table.from_pandas(rejected_frame, schema=REJECTED_SCHEMA, preserve_index=False))
    from .stats import write_stats

    settings = dataset_settings(config)
    stats = write_stats(build_dir, manifest, rejected_frame, build_config=settings,
                        sections={"judge": judge_summary} if judge_summary else None)
    write_json_atomic(build_dir / DATASET_SETTINGS_FILE, settings)
    plan.finish()
    if hf_target is not None:
        export_huggingface(manifest, out, hf_target)
    return BuildResult(out=out, manifest=manifest, rejected=rejected_frame, stats=stats, hf_dataset=hf_target)


def _resolve_subject_settings(config: BuildConfig) -> None:
    """The multi-subject defaults of the grouping: drawn figures are described by colour signatures (similarity
    line 0.6), photos by their faces (the face embedder; dlib's same-person line 0.912). Checked here so a bad
    combination stops the build before it writes."""
    from .subjects import FACE_DESCRIPTOR, FACE_MATCH_SIMILARITY

    if config.grouping == "tags":
        config.subject_descriptor = config.subject_descriptor or "colors"
        if config.subject_descriptor == FACE_DESCRIPTOR:
            raise SameIdError("subject descriptor 'faces' is for photos (grouping 'faces'); drawn figures take "
                              "colors or image:<image embedder spec>")
        if config.subject_min_similarity is None:
            config.subject_min_similarity = 0.6
        return
    config.subject_descriptor = config.subject_descriptor or FACE_DESCRIPTOR
    if config.subject_descriptor != FACE_DESCRIPTOR:
        raise SameIdError(f"subject descriptor {config.subject_descriptor!r} describes drawn figures (grouping "
                          "'tags'); photos are matched by their faces (--face-embedder): leave it unset")
    if config.subject_min_similarity is None:
        config.subject_min_similarity = FACE_MATCH_SIMILARITY
    if config.max_subjects > 1:
        from ..backends.registry import backend_class

        if not hasattr(backend_class("face_embedder", config.face_embedder), "embed_faces"):
            raise SameIdError(f"--max-subjects above 1 on photos needs a face embedder that finds every face of an "
                              f"image (dlib); {config.face_embedder!r} embeds one face per image: use "
                              "--face-embedder dlib")


def _multi_subject_candidates(rows: pd.DataFrame, config: BuildConfig) -> np.ndarray:
    """Per annotated row, whether it goes on as a multi-subject candidate: with ``max_subjects`` K >= 2, a post of
    2..K characters (tags grouping; the filters let no more through) or a photo with 2..K subject faces (faces
    grouping, :func:`.subjects.subject_faces`; a photo with more stays a single-subject image of its most
    prominent face, as with K = 1)."""
    if config.max_subjects < 2:
        return np.zeros(len(rows), dtype=bool)
    if config.grouping == "tags":
        return rows["characters"].map(lambda c: c is not None and len(c) > 1).to_numpy()
    from .subjects import subject_faces

    fraction = config.subject_config().min_component_fraction
    counts = np.array([len(subject_faces(boxes, vectors, fraction))
                       for boxes, vectors in zip(rows["face_boxes"], rows["face_embeddings"])], dtype=np.int64)
    return (counts >= 2) & (counts <= config.max_subjects)


def dataset_settings(config: BuildConfig) -> dict:
    """What ``build_settings.json`` records: every setting that decided the dataset's content, and the version
    of sameid that built it. Later stages read thresholds from it (``near_duplicate_bits``) instead of
    assuming the defaults; the dataset card shows it."""
    from .. import __version__

    filters = _filter_config(config)
    return {
        "sameid_version": __version__,
        "source": {"path": config.source, "kind": config.source_format, "image_root": config.image_root},
        "is_generated_sample": config.is_generated_sample,
        "grouping": config.grouping,
        "near_duplicate_bits": config.near_duplicate_bits,
        "answer_matching": config.answer_matching if config.grouping == "tags" else None,
        "filters": {
            "unwanted_tags": sorted(filters.unwanted_tags),
            "clothing_vocabulary": config.clothing_vocabulary or "bundled (sameid/data/clothing_tags.txt)",
            "require_single_character": filters.require_single_character,
            "require_clothing_tag": filters.require_clothing_tag,
            "require_artist": filters.require_artist,
            "require_single_artist": filters.require_single_artist,
            "allowed_ratings": sorted(filters.allowed_ratings),
            "reject_monochrome": config.reject_monochrome,
        },
        "label_check": config.label_check,
        "multi_subject": {
            "max_subjects": config.max_subjects, "descriptor": config.subject_descriptor,
            "min_similarity": config.subject_min_similarity, "min_margin": config.subject_min_margin,
        },
        "judge": None if config.judge is None else {
            "spec": config.judge, "margin": config.judge_margin, "clear_fraction": config.judge_clear_fraction,
        },
        "face_clustering": {
            "method": config.face_clustering, "eps": config.face_eps, "main_fraction": config.face_main_fraction,
            "min_samples": config.min_samples,
        },
        "backends": {kind: getattr(config, kind) for kind in ("head_detector", "segmenter", "vqa", "face_embedder")},
        "shard_size": config.shard_size,
    }


def _counted(frame: pd.DataFrame, before: str, after: str) -> str:
    """``before`` + "reason: count, ..." (the three most common reasons) + ``after``, or "" for no rows."""
    if frame is None or not len(frame) or "reason" not in frame:
        return ""
    counts = frame["reason"].fillna("unknown").value_counts()
    text = ", ".join(f"{reason}: {count}" for reason, count in counts.head(3).items())
    if len(counts) > 3:
        text += f", {len(counts) - 3} more reasons"
    return f"{before}{text}{after}"


def _check_some_image_exists(kept: pa.Table, config: BuildConfig) -> None:
    """At least one row names an existing file (one ``stat`` per row at most; stops at the first found)."""
    images = kept.column("image").to_pylist()
    if any(image and os.path.isfile(image) for image in images):
        return
    named = [image for image in images if image]
    if not named:
        errors = Counter(kept.column("path_error").to_pylist())
        raise SameIdError(f"{config.source}: no row names a usable image path "
                          f"({', '.join(f'{e}: {n}' for e, n in errors.most_common(3))})")
    where = f"--image-root {config.image_root}" if config.source_format == "danbooru" else config.source
    raise SameIdError(f"none of the {len(named)} images of {config.source} exists (first: {named[0]}); "
                      f"check {where}")


def _filter_config(config: BuildConfig) -> FilterConfig:
    from .filters import load_vocabulary

    options = {}
    if config.unwanted_tags is not None:
        options["unwanted_tags"] = frozenset(config.unwanted_tags)
    if config.clothing_vocabulary is not None:
        options["clothing_vocabulary"] = load_vocabulary(config.clothing_vocabulary)
    if config.grouping == "faces":
        # Photos of people carry no character or clothing tags; only unwanted tags and ratings apply.
        options.update(require_single_character=False, require_clothing_tag=False, require_artist=False)
    elif config.allow_no_artist:
        options["require_artist"] = False
    return FilterConfig(**options)


def _apply_filters(table: pa.Table, config: BuildConfig) -> tuple[pa.Table, pa.Table]:
    """The tag filters; with ``max_subjects`` K >= 2 (tag grouping), posts of 2..K characters pass every filter
    but the one-character rule and go on as multi-subject candidates (dataset/subjects.py)."""
    filters = _filter_config(config)
    if config.max_subjects < 2 or not filters.require_single_character:
        return apply_tag_filters(table, filters)
    import pyarrow.compute as pc

    counts = pc.fill_null(pc.list_value_length(table.column("characters")), 0).to_numpy()
    several = (counts >= 2) & (counts <= config.max_subjects)
    if not several.any():
        return apply_tag_filters(table, filters)
    from dataclasses import replace as replaced

    single_kept, single_out = apply_tag_filters(table.filter(pa.array(~several)), filters)
    multi_kept, multi_out = apply_tag_filters(table.filter(pa.array(several)),
                                              replaced(filters, require_single_character=False))
    return pa.concat_tables([single_kept, multi_kept]), pa.concat_tables([single_out, multi_out])


def _artist_key(artists) -> str:
    """The artist key of the outfit grouping (dataset/outfits.py): the artist tags joined by "+"."""
    from .outfits import UNKNOWN_ARTIST

    return "+".join(artists) if artists is not None and len(artists) else UNKNOWN_ARTIST


def _drop_duplicate_ids(table: pa.Table) -> tuple[pa.Table, pd.DataFrame]:
    ids = table.column("id").to_pandas()
    repeated = ids.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return table, _rejected_frame(pd.DataFrame(), "source")
    frame = pd.DataFrame({"id": ids[repeated], "image": table.column("image").to_pandas()[repeated],
                          "reason": DUPLICATE_ID, "detail": "an earlier row has the same id; the first is kept"})
    return table.filter(pa.array(~repeated)), _rejected_frame(frame, "source")


def _rejected_frame(frame: pd.DataFrame, stage: str) -> pd.DataFrame:
    frame = frame.reindex(columns=["id", "image", "reason", "detail"]).copy()
    frame["stage"] = stage
    return frame


def _finish_rejected(frames: list[pd.DataFrame], table: pa.Table) -> pd.DataFrame:
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else _rejected_frame(pd.DataFrame(), "source")
    images = dict(zip(table.column("id").to_pylist(), table.column("image").to_pylist()))
    frame["id"] = frame["id"].astype(str)
    frame["image"] = frame["image"].astype(object).where(frame["image"].notna(), frame["id"].map(images))
    frame["detail"] = frame["detail"].fillna("").astype(str)
    return frame[["id", "image", "stage", "reason", "detail"]].reset_index(drop=True)


# --- annotate: shards, engines ------------------------------------------------------------------------------

def _shard_path(work: Path, index: int) -> Path:
    return work / "annotations" / f"part-{index:06d}.parquet"


ANNOTATION_SCHEMA = pa.schema([
    ("id", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("phash", pa.string()), ("head_box", pa.list_(pa.float64())),
    ("head_box_source", pa.string()), ("mask", pa.string()), ("mask_source", pa.string()),
    ("vqa_answer", pa.string()), ("vqa_backend", pa.string()), ("embedding", pa.list_(pa.float32())),
    ("notes", pa.list_(pa.string())), ("face_boxes", pa.list_(pa.list_(pa.float64()))),
    ("face_embeddings", pa.list_(pa.list_(pa.float32()))),
])
assert tuple(ANNOTATION_SCHEMA.names) == ANNOTATION_COLUMNS


def _annotate(kept: pa.Table, annotate_config: AnnotateConfig, config: BuildConfig, work: Path,
              progress: bool) -> pd.DataFrame:
    rows = kept.select(["id", "image", "path_error", "head_box", "mask"]).to_pylist()
    chunks = [rows[i:i + config.shard_size] for i in range(0, len(rows), config.shard_size)]
    (work / "annotations").mkdir(parents=True, exist_ok=True)
    pending = []
    for index, chunk in enumerate(chunks):
        shard = _shard_path(work, index)
        if shard.exists():
            done = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
            if done != [str(r["id"]) for r in chunk]:
                raise SameIdError(f"{shard} does not match the source rows; the source changed since the "
                                  "interrupted build: rerun with --overwrite")
        else:
            pending.append(index)

    with _progress(progress, len(chunks), len(chunks) - len(pending)) as advance:
        for index, results in _run_engine(config, annotate_config, [(i, chunks[i]) for i in pending]):
            write_parquet_atomic(_shard_path(work, index), pa.Table.from_pylist(results, schema=ANNOTATION_SCHEMA))
            advance()
    shards = [pq.read_table(_shard_path(work, i), schema=ANNOTATION_SCHEMA) for i in range(len(chunks))]
    table = pa.concat_tables(shards) if shards else ANNOTATION_SCHEMA.empty_table()
    return table.to_pandas()


def _run_engine(config: BuildConfig, annotate_config: AnnotateConfig,
                jobs: list[tuple[int, list[dict]]]) -> Iterator[tuple[int, list[dict]]]:
    if not jobs:
        return
    if config.engine == "ray":
        yield from _run_ray(config, annotate_config, jobs)
    elif config.workers == 1 or len(jobs) == 1:
        for index, chunk in jobs:
            yield index, annotate_rows(chunk, annotate_config)
    else:
        # spawn: backends hold thread pools and native handles that do not survive fork.
        # Workers die with the build: a killed build (kill -9 included) leaves no worker holding memory.
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=get_context("spawn"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(annotate_rows, chunk, annotate_config): index for index, chunk in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker process when ``parent_pid`` (the build) dies, however it dies.

    On Linux the kernel sends SIGKILL to the worker when its parent ends (``prctl(PR_SET_PDEATHSIG)``); a
    daemon thread that checks ``os.getppid()`` every second covers other systems and a parent that died before
    this ran. A pool's own shutdown is unaffected: it ends its workers before the build ends.
    """
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="sameid-die-with-parent", daemon=True).start()


def _annotate_job(item: dict, annotate_config: AnnotateConfig) -> dict:
    rows = json.loads(item["rows"])
    return {"index": item["index"], "results": json.dumps(annotate_rows(rows, annotate_config))}


def _run_ray(config: BuildConfig, annotate_config: AnnotateConfig,
             jobs: list[tuple[int, list[dict]]]) -> Iterator[tuple[int, list[dict]]]:
    """The same per-image function on Ray Data: one item per shard, so shards stay the unit of resume."""
    try:
        import ray
    except ImportError:
        raise SameIdError("--engine ray needs Ray: pip install 'ray[data]' (or scripts/setup)") from None
    started_here = not ray.is_initialized()
    if started_here:
        # A cluster named by RAY_ADDRESS brings its own resources; a local instance gets --workers CPUs.
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": config.workers, "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, ignore_reinit_error=True,
                 logging_level=logging.ERROR if get_verbosity() == "quiet" else logging.WARNING, **local)
    # Ray Data draws its own progress bars and logs its plan; they follow sameid's --quiet / progress setting.
    ray.data.DataContext.get_current().enable_progress_bars = get_verbosity() != "quiet"
    try:
        items = [{"index": index, "rows": json.dumps(chunk)} for index, chunk in jobs]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _annotate_job, fn_kwargs={"annotate_config": annotate_config}
        )
        for item in dataset.iter_rows():
            yield int(item["index"]), json.loads(item["results"])
    finally:
        if started_here:
            ray.shutdown()


class _progress:
    """A rich progress bar over shards (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled or self.total == 0:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress("annotating shards", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar.start()
        task = self._bar.add_task("annotate", total=self.total, completed=self.done)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if getattr(self, "_bar", None) is not None:
            self._bar.stop()


# --- grouping ---------------------------------------------------------------------------------------------

def _group_by_outfit(rows: pd.DataFrame, matching: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Same character, same artist, same (normalised, order-sensitive) answer to the outfit question."""
    from .outfits import group_by_outfit

    if rows.empty:
        return rows.assign(identity=pd.Series(dtype=object)), pd.DataFrame(columns=["id", "reason", "detail"])
    keys = pa.Table.from_pandas(rows[["id", "characters", "artists", "vqa_answer"]], preserve_index=False)
    grouped = group_by_outfit(keys, answer_column="vqa_answer", matching=matching)
    grouped = grouped.select(["character", "artist", "outfit", "identity"])
    rows = pd.concat([rows.reset_index(drop=True), grouped.to_pandas()], axis=1)
    rows["label_check"] = "tags"
    unmatched = rows["outfit"].isna()
    rejected = pd.DataFrame({
        "id": rows.loc[unmatched, "id"], "reason": UNMATCHED_ANSWER,
        "detail": [f"answer {a!r} to the outfit question does not name two colours" for a in
                   rows.loc[unmatched, "vqa_answer"]],
    })
    return rows.loc[~unmatched].reset_index(drop=True), rejected


def _group_by_face(rows: pd.DataFrame, config: BuildConfig, judge=None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Given labels checked (``config.label_check``, see :data:`LABEL_CHECKS`) and cleaned per label, or
    unlabelled images clustered, on face embeddings (002). ``label_check`` of each kept row says which:
    ``faces``, ``trusted`` or ``clustered``. With a ``judge`` the doubtful labels are judged
    (:func:`_clean_checked_labels`); the third value counts what the judge did (``stats.json``, the card)."""
    from . import cluster

    rows = rows.reset_index(drop=True)
    has_face = rows["embedding"].notna().to_numpy()
    labelled = rows["identity_hint"].notna().to_numpy()
    identity = pd.Series([None] * len(rows), dtype=object)
    check = pd.Series([None] * len(rows), dtype=object)
    verdicts = {"judge_verdict": pd.Series([None] * len(rows), dtype=object),
                "judge_reason": pd.Series([None] * len(rows), dtype=object), "summary": {}}
    rejected = []
    no_face = np.zeros(len(rows), dtype=bool)
    vectors = {i: np.asarray(v, dtype=np.float32) for i, v in zip(np.nonzero(has_face)[0], rows.loc[has_face, "embedding"])}
    checked: list[tuple[str, np.ndarray]] = []  # (label, positions of its faces) of the labels checked by faces
    for hint, members in rows.loc[labelled].groupby("identity_hint", sort=True).indices.items():
        positions = np.nonzero(labelled)[0][members]
        faces = positions[has_face[positions]]
        if config.label_check == "trust" or (
                config.label_check == "auto" and len(faces) < FACE_LABEL_FRACTION * len(positions)):
            identity.iloc[positions] = hint
            check.iloc[positions] = "trusted"
            continue
        no_face[positions[~has_face[positions]]] = True
        if len(faces):
            checked.append((hint, faces))
    if checked:
        rejected.extend(_clean_checked_labels(rows, checked, vectors, identity, check, verdicts, config, judge))
    unlabelled = np.nonzero(~labelled & has_face)[0]
    no_face |= ~labelled & ~has_face
    if len(unlabelled):
        options = {} if config.face_eps is None else {"eps": config.face_eps}
        labels = cluster.cluster_faces(np.stack([vectors[i] for i in unlabelled]), method=config.face_clustering,
                                       min_samples=config.min_samples, **options)
        for position, label in zip(unlabelled, labels):
            if label >= 0:
                identity.iloc[position] = f"face-{label:05d}"
                check.iloc[position] = "clustered"
        noise = unlabelled[labels < 0]
        rejected.append(pd.DataFrame({"id": rows.loc[noise, "id"], "reason": NO_MATCH,
                                      "detail": "no other face close enough to share an identity"}))
    rejected.insert(0, pd.DataFrame({"id": rows.loc[no_face, "id"], "reason": NO_FACE,
                                     "detail": "no face the face embedder could use"}))
    rows["identity"] = identity.to_numpy()
    rows["label_check"] = check.to_numpy()
    if judge is not None:
        rows["judge_verdict"] = verdicts["judge_verdict"].to_numpy()
        rows["judge_reason"] = verdicts["judge_reason"].to_numpy()
    rows = rows.loc[rows["identity"].notna()].reset_index(drop=True)
    return rows, pd.concat(rejected, ignore_index=True), verdicts["summary"]


def _clean_checked_labels(rows: pd.DataFrame, checked: list[tuple[str, np.ndarray]], vectors: dict, identity: pd.Series,
                          check: pd.Series, verdicts: dict, config: BuildConfig, judge) -> list[pd.DataFrame]:
    """Clean every checked label's faces at once (:func:`.cluster.clean_identity_folders`); with a judge, the
    doubtful labels (:func:`.cluster.doubtful_folders`) take the judge's verdict (:mod:`.judging`), the clear
    ones and those the judge could not judge keep the clustering's. Fills ``identity``, ``check`` and
    ``verdicts`` in place; returns the rejected rows."""
    from ..backends.judge_base import FolderToJudge
    from . import cluster, judging

    faces = np.concatenate([positions for _, positions in checked])
    codes = np.repeat(np.arange(len(checked)), [len(positions) for _, positions in checked])
    options = {} if config.face_eps is None else {"max_eps": config.face_eps}
    cleanings = cluster.clean_identity_folders(
        np.stack([vectors[i] for i in faces]), codes, main_fraction=config.face_main_fraction,
        near_margin=config.judge_margin if judge is not None else 0.0, **options)
    keep = cleanings.keep.copy()
    judged: dict[int, judging.JudgeOutcome] = {}
    if judge is not None:
        doubts = cluster.doubtful_folders(cleanings, config.judge_clear_fraction, config.judge_margin)
        folders = []
        for code, doubt in doubts.items():
            members = np.flatnonzero(codes == code)
            positions = faces[members]
            folders.append(FolderToJudge(
                identity=checked[code][0], images=tuple(str(rows.at[i, "image"]) for i in positions),
                boxes=tuple(None if rows.at[i, "head_box"] is None else tuple(rows.at[i, "head_box"]) for i in positions),
                embeddings=np.stack([vectors[i] for i in positions]), proposal=cleanings.keep[members], doubt=doubt))
        cache = judging.VerdictCache(config.judge_cache or judging.default_cache_dir())
        for code, outcome in zip(doubts, judging.judge_folders(folders, judge, cache), strict=True):
            judged[code] = outcome
            keep[codes == code] = outcome.keep
        statuses = Counter(outcome.status for outcome in judged.values())
        verdicts["summary"] = {
            "judge": config.judge, "folders_checked": len(checked), "doubtful": len(doubts),
            "judged": statuses[judging.JUDGED], "cached": statuses[judging.CACHED], "failed": statuses[judging.FAILED],
            "images_rejected": 0, "images_rescued": 0, "margin": config.judge_margin, "clear_fraction": config.judge_clear_fraction,
        }
    rejected = []
    for code, (hint, _) in enumerate(checked):
        members = np.flatnonzero(codes == code)
        positions = faces[members]
        kept = keep[members]
        identity.iloc[positions[kept]] = hint
        check.iloc[positions[kept]] = "faces"
        eps = f"eps {cleanings.eps[code]:.3f}"
        outcome = judged.get(code)
        if outcome is None:
            rejected.append(pd.DataFrame({"id": rows.loc[positions[~kept], "id"], "reason": IDENTITY_OUTLIER,
                                          "detail": f"outside the main face cluster of {hint!r} ({eps})"}))
            continue
        proposal = cleanings.keep[members]
        if outcome.status == judging.FAILED:
            verdicts["judge_verdict"].iloc[positions[kept]] = JUDGE_FAILED
            verdicts["judge_reason"].iloc[positions[kept]] = outcome.reason
            rejected.append(pd.DataFrame({
                "id": rows.loc[positions[~kept], "id"], "reason": IDENTITY_OUTLIER,
                "detail": f"outside the main face cluster of {hint!r} ({eps}); doubtful ({outcome.doubt}), but the "
                          f"judge gave no verdict ({outcome.reason}), so the clustering decided"}))
            continue
        verdicts["judge_verdict"].iloc[positions[kept & proposal]] = JUDGE_SAME
        verdicts["judge_verdict"].iloc[positions[kept & ~proposal]] = JUDGE_RESCUED
        verdicts["judge_reason"].iloc[positions[kept]] = outcome.reason
        verdicts["summary"]["images_rejected"] += int((~kept & proposal).sum())
        verdicts["summary"]["images_rescued"] += int((kept & ~proposal).sum())
        rejected.append(pd.DataFrame({
            "id": rows.loc[positions[~kept], "id"], "reason": JUDGE_REJECTED,
            "detail": f"{config.judge} ({outcome.status}): {outcome.reason} (doubtful: {outcome.doubt}; the "
                      f"clustering kept {int(proposal.sum())} of {len(proposal)} faces)"}))
    return rejected


# --- output ----------------------------------------------------------------------------------------------

def _manifest(rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    from .outfits import similar_lists

    rows = rows.reset_index(drop=True)
    groups = pd.factorize(rows["identity"])[0].astype(np.int64)
    similar = similar_lists(pa.array(rows["id"].astype(str)), groups).to_pylist() if len(rows) else []
    manifest = pd.DataFrame({
        "id": rows["id"].astype(str),
        "image": rows["image"].astype(str),
        "identity": rows["identity"].astype(str),
        "similar": similar,
        "caption": rows["caption"].fillna("").astype(str),
        "tags": rows["tags"].map(list),
        "head_box": rows["head_box"].map(lambda b: None if b is None else [float(v) for v in b]),
        # Absolute, like `image`: Hugging Face `datasets` opens an Image path as given (relative to the current
        # directory), so a relative mask would not load from `datasets.load_dataset(<dataset dir>)`.
        "mask": rows["mask"].map(lambda m: None if m is None or m != m else str(m if Path(m).is_absolute() else out / m)),
        "width": rows["width"].astype("int64"),
        "height": rows["height"].astype("int64"),
        "phash": rows["phash"].astype(str),
        "near_duplicates": rows["near_duplicates"],
    })
    for column in ("character", "artist", "outfit", "cloth_tags", "vqa_answer", "vqa_backend",
                   "head_box_source", "mask_source", "label_check", "judge_verdict", "judge_reason", "notes"):
        if column in rows:
            manifest[column] = rows[column].to_numpy()
    assert tuple(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    return manifest


def export_huggingface(manifest: pd.DataFrame, dataset_dir: Path, target: Path) -> Path:
    """Write the manifest as a Hugging Face ``datasets`` dataset (``save_to_disk``) with an ``Image`` column."""
    import datasets

    if target.exists() and any(target.iterdir()):
        raise SameIdError(f"{target} is not empty; choose another --export-hf folder")
    frame = manifest.copy()
    frame["image"] = [str(p if Path(p).is_absolute() else dataset_dir / p) for p in frame["image"]]
    frame["mask"] = [None if m is None else str(m if Path(m).is_absolute() else dataset_dir / m) for m in frame["mask"]]
    dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
    dataset = dataset.cast_column("image", datasets.Image())
    dataset.save_to_disk(str(target))
    return target
