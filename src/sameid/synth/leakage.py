"""Identity-leakage check of synthetic identities: none may be a real person, and no two may be one person.

Hybrid Generative Fusion (arXiv 2508.10672, Method Summary and "Open Question 3": verification of the synthetic
identities against mainstream datasets) requires that no generated identity reproduces a real one. Here every
identity is one embedding, the normalised mean of its images' unit face embeddings (:func:`identity_embeddings`);
each synthetic identity is searched in a gallery of real identities and among the other synthetic identities with
a faiss index, never a Python loop over pairs:

- ``flat`` (default): ``faiss.IndexFlatIP`` on unit vectors, exact (the same nearest neighbours as brute force);
- ``ivf``: ``faiss.IndexIVFFlat`` (inner product, ``nlist`` lists, default ~2 sqrt(m), trained on a sample,
  ``nprobe`` lists searched): approximate, no guarantee, for galleries of millions; ``benchmarks/bench_leakage.py``
  measures its speed and whether it finds the same answers as brute force (docs/benchmarks.md: at 100K x 1M,
  4,096 lists at nprobe 64 found them on both of its data sets, 28x faster than NumPy).

Face embeddings are computed once per image content (and head box) and kept in the shared embedding cache
(:func:`embed_faces`, :mod:`sameid.embedding_cache`), in batches written as they finish.

An identity within cosine distance ``threshold`` of a real identity is removed (``real person``); of two
synthetic identities within ``synthetic_threshold`` of each other, the one whose name sorts later is removed
(``duplicate synthetic identity``; a conservative rule: in a chain a-b-c both b and c go); an identity without a
single face the embedder finds cannot be checked and is removed too (``no face to check``). The default threshold,
0.088, is dlib's own verification rule (euclidean 0.6 on raw descriptors of norm ~1.43, see
:mod:`sameid.dataset.cluster`) on identity means; another embedder needs its own.

:func:`run_leakage` never changes the synthetic dataset: it writes a **new dataset dir** (``out``) with the kept
identities' manifest, ``rejected.parquet`` (the input's rejections plus the removed identities' images, stage
``leakage``), ``leakage.parquet`` (one row per identity: nearest real and synthetic identities and distances,
``removed``, ``why``), ``build_settings.json`` (the input's, plus a ``leakage`` entry), ``stats.json`` and the card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_atomic, write_json_atomic, write_parquet_atomic
from ..embedding_cache import EmbeddingCache, file_digest
from ..errors import SameIdError
from ..records import DATASET_SETTINGS_FILE, read_dataset_settings

LEAKAGE_FILE = "leakage.parquet"
DEFAULT_THRESHOLD = 0.088
INDEXES = ("flat", "ivf")
DEFAULT_NPROBE = 128
REAL_PERSON = "real person"
DUPLICATE = "duplicate synthetic identity"
NO_FACE = "no face to check"
#: Queries per faiss call: bounds the (chunk x k) result arrays, and lets a long search be followed.
_QUERY_CHUNK = 16384
#: Images embedded between two writes to the embedding cache.
EMBED_BATCH = 64
#: The embedding cache of the command line (shared with ``sameid eval``).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sameid" / "embeddings"
#: Removed identities listed in the card (all of them are in leakage.parquet).
_CARD_ROWS = 50
logger = logging.getLogger(__name__)


@dataclass
class Gallery:
    """Identity embeddings: ``vectors`` (m, d) float32 unit rows, ``names`` (m,) identity names, ``embedder``
    (the face-embedder spec that made them) and ``source`` (where they came from)."""

    vectors: np.ndarray
    names: np.ndarray
    embedder: str = ""
    source: str = ""

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """An ``.npz`` (``vectors``, ``names``, ``embedder``, ``source``) that :meth:`load` and ``--real`` read."""
        path = Path(path)
        if path.suffix != ".npz":
            raise SameIdError(f"{path}: a saved gallery is an .npz file")
        write_atomic(path, lambda tmp: np.savez(tmp, vectors=self.vectors, names=self.names.astype(str),
                                                embedder=np.array(self.embedder), source=np.array(self.source)),
                     suffix=".npz")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gallery:
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors, names = data["vectors"], data["names"]
                embedder, source = str(data["embedder"]), str(data["source"])
        except (OSError, ValueError, KeyError) as error:
            raise SameIdError(f"{path}: not a saved gallery of identity embeddings ({error})") from None
        if vectors.ndim != 2 or names.shape != (vectors.shape[0],):
            raise SameIdError(f"{path}: vectors {vectors.shape} and names {names.shape} do not match")
        return cls(_unit(vectors, str(path)), names.astype(str), embedder, source)


def _unit(vectors: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise SameIdError(f"{what}: embeddings must be a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~np.isfinite(x).all(axis=1) | (norms[:, 0] == 0)
    if bad.any():
        raise SameIdError(f"{what}: embedding row {int(np.flatnonzero(bad)[0])} is zero or not finite")
    return np.ascontiguousarray(x / norms)


def identity_embeddings(vectors: np.ndarray, identities, *, embedder: str = "", source: str = "") -> Gallery:
    """One embedding per identity: the normalised mean of its rows' unit embeddings (names sorted)."""
    unit = _unit(vectors, source or "embeddings")
    names, codes = np.unique(np.asarray(identities).astype(str), return_inverse=True)
    sums = np.zeros((names.size, unit.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, unit)
    return Gallery(_unit(sums, source or "identity means"), names, embedder, source)


def build_index(vectors: np.ndarray, index: str = "flat", nprobe: int = DEFAULT_NPROBE, seed: int = 0,
                nlist: int | None = None):
    """A faiss inner-product index over unit ``vectors`` (see the module doc for ``flat`` and ``ivf``; ``nlist``:
    the number of ivf lists, default ~2 sqrt(m), at most 4,096)."""
    import faiss

    if index not in INDEXES:
        raise SameIdError(f"unknown index {index!r}: choose one of {', '.join(INDEXES)}")
    m, dim = vectors.shape
    if index == "flat" or m < 1024:  # below ~1K entries a list structure saves nothing
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return flat
    if nlist is not None and not 1 <= nlist <= m // 39:
        raise SameIdError(f"{nlist} ivf lists for {m} vectors: faiss needs at least 39 training vectors per list; "
                          f"use 1 to {max(1, m // 39)} lists")
    nlist = int(nlist or min(4096, max(16, 2 * math.sqrt(m))))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    sample = min(m, 50 * nlist)
    rng = np.random.default_rng(seed)
    ivf.train(vectors[np.sort(rng.choice(m, sample, replace=False))] if sample < m else vectors)
    ivf.add(vectors)
    ivf.nprobe = int(max(1, min(nprobe, nlist)))
    return ivf


def search(index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(cosine distances, indices), each (n, k), of the ``k`` nearest entries of ``index`` to unit ``queries``;
    index -1 and distance inf where there are fewer than ``k`` entries."""
    distances = np.full((queries.shape[0], k), np.inf)
    indices = np.full((queries.shape[0], k), -1, dtype=np.int64)
    for start in range(0, queries.shape[0], _QUERY_CHUNK):
        sims, ids = index.search(np.ascontiguousarray(queries[start:start + _QUERY_CHUNK], dtype=np.float32), k)
        found = ids >= 0
        distances[start:start + len(ids)] = np.where(found, np.clip(1.0 - sims.astype(np.float64), 0.0, 2.0), np.inf)
        indices[start:start + len(ids)] = ids
    return distances, indices


def check_identities(synthetic: Gallery, real: Gallery, threshold: float = DEFAULT_THRESHOLD,
                     synthetic_threshold: float | None = None, index: str = "flat",
                     nprobe: int = DEFAULT_NPROBE, nlist: int | None = None) -> pd.DataFrame:
    """One row per synthetic identity (``synthetic.names`` order): ``identity``, ``nearest_real``,
    ``real_distance``, ``nearest_synthetic``, ``synthetic_distance``, ``removed``, ``why`` (see the module doc)."""
    synthetic_threshold = threshold if synthetic_threshold is None else synthetic_threshold
    for name, value in (("threshold", threshold), ("synthetic threshold", synthetic_threshold)):
        if not (np.isfinite(value) and 0.0 <= value < 2.0):
            raise SameIdError(f"the {name} must be a cosine distance in [0, 2), not {value!r}")
    if len(real) and real.vectors.shape[1] != synthetic.vectors.shape[1]:
        raise SameIdError(f"the real gallery has {real.vectors.shape[1]}-d embeddings, the synthetic identities "
                          f"{synthetic.vectors.shape[1]}-d: embed both with the same face embedder")
    n = len(synthetic)
    real_distance, real_index = np.full(n, np.inf), np.full(n, -1)
    if len(real) and n:
        d, i = search(build_index(real.vectors, index, nprobe,
                                  nlist=nlist if nlist is None else min(nlist, len(real) // 39)), synthetic.vectors, 1)
        real_distance, real_index = d[:, 0], i[:, 0]
    synthetic_distance, synthetic_index = np.full(n, np.inf), np.full(n, -1)
    if n > 1:
        d, i = search(build_index(synthetic.vectors, index, nprobe,
                                  nlist=nlist if nlist is None else min(nlist, n // 39)), synthetic.vectors, 2)
        # the nearest entry is normally the query itself; take the nearest that is not
        other = np.where(i[:, 0] == np.arange(n), 1, 0)
        synthetic_distance = d[np.arange(n), other]
        synthetic_index = i[np.arange(n), other]
    table = pd.DataFrame({
        "identity": synthetic.names.astype(str),
        "nearest_real": _names_at(real.names, real_index),
        "real_distance": real_distance,
        "nearest_synthetic": _names_at(synthetic.names, synthetic_index),
        "synthetic_distance": synthetic_distance,
    })
    leaks = table["real_distance"].to_numpy() <= threshold
    # of a too-close synthetic pair, the identity whose name sorts later goes
    later = table["identity"].to_numpy().astype(str) > table["nearest_synthetic"].fillna("").to_numpy().astype(str)
    duplicates = (table["synthetic_distance"].to_numpy() <= synthetic_threshold) & later & ~leaks
    table["removed"] = leaks | duplicates
    table["why"] = pd.Series([REAL_PERSON if leak else DUPLICATE if dup else None
                              for leak, dup in zip(leaks, duplicates, strict=True)], dtype=object)
    return table


def _names_at(names: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``names[indices]`` as objects, None where the index is -1 (no entry found)."""
    out = np.full(indices.shape, None, dtype=object)
    found = indices >= 0
    out[found] = names.astype(str)[indices[found]]
    return out


# --- galleries from files ---------------------------------------------------------------------------------------


def _cache_key(digest: str, box) -> str:
    """The file's content hash, or with a box the hash of both: the same key :mod:`sameid.evaluate` gives a whole
    image, so the two stages share cached face embeddings."""
    if box is None:
        return digest
    return hashlib.sha256(f"{digest}\0box:{','.join(repr(float(v)) for v in box)}".encode()).hexdigest()


def embed_faces(paths: list[str], boxes: list, embedder, cache: EmbeddingCache | None = None,
                batch_size: int = EMBED_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a face, their embeddings) for image files, each face inside its box when one is given.

    Each distinct content (and box) is embedded once: what ``cache`` (:class:`sameid.embedding_cache.EmbeddingCache`,
    model ``face:<embedder spec>``, keyed by file content) already holds is read from it, the rest is loaded and
    embedded ``batch_size`` images at a time, and each finished batch is written to the cache at once (a killed
    run keeps it); a NaN row records "no face". A cached entry that is not a usable embedding is reported in one
    warning line and computed again.
    """
    from ..images import load_image

    cache = cache or EmbeddingCache(None)
    model = f"face:{getattr(embedder, 'spec', '') or type(embedder).__name__}"
    keys = []
    for row, (path, box) in enumerate(zip(paths, boxes, strict=True)):
        try:
            keys.append(_cache_key(file_digest(path), box))
        except OSError as error:
            raise SameIdError(f"{path} (row {row}): cannot read the image ({error.strerror or error}); fix or "
                              "remove the row") from None
    known = cache.load(model)
    width = int(getattr(embedder, "dim", 0) or 0)
    for row, key in enumerate(keys):
        if key not in known:
            continue
        vector = np.asarray(known[key], dtype=np.float32)
        if vector.ndim == 1 and np.isnan(vector).all():
            continue  # "no face", as recorded
        if (vector.ndim != 1 or (width and len(vector) != width) or not np.isfinite(vector).all()
                or not np.linalg.norm(vector)):
            logger.warning("embedding cache entry for %s in %s is not a usable face embedding (shape %s); "
                           "computing it again", paths[row], cache.path(model), vector.shape)
            del known[key]
    first: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key not in known:
            first.setdefault(key, row)
    todo = list(first)
    for start in range(0, len(todo), max(1, batch_size)):
        batch: dict[str, np.ndarray] = {}
        for key in todo[start:start + max(1, batch_size)]:
            row = first[key]
            image, _ = load_image(paths[row])
            box = boxes[row]
            vector = embedder.embed(image, None if box is None else tuple(float(v) for v in box))
            if vector is None:
                batch[key] = None
            else:
                batch[key] = np.asarray(vector, dtype=np.float32)
                width = width or len(batch[key])
        rows = {k: (np.full(width or 1, np.nan, np.float32) if v is None else v) for k, v in batch.items()}
        known.update(rows)
        # one width per cache file: a "no face" row waits until the embedding width is known
        cache.append(model, {k: v for k, v in rows.items() if width and len(v) == width})
    if todo:
        cache.compact(model)
    found = [row for row, key in enumerate(keys) if not np.isnan(known[key]).all()]
    vectors = np.stack([known[keys[row]] for row in found]) if found else np.zeros((0, 0), dtype=np.float32)
    return np.asarray(found, dtype=np.int64), vectors


def _box(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    box = list(value)
    return box if len(box) == 4 else None


def read_gallery(source: str | os.PathLike, embedder_spec: str = "dlib",
                 cache_dir: str | os.PathLike | None = None) -> Gallery:
    """Real identities from a dataset dir (``manifest.parquet``: its ``identity`` column, faces inside
    ``head_box``), a saved ``.npz`` gallery (:meth:`Gallery.save`), or a folder of images (``root/<identity>/...``
    for nested images, the file name for images directly under the root). Face embeddings are cached in
    ``cache_dir`` (:func:`embed_faces`; None: nothing kept)."""
    from ..backends.registry import create_backend
    from ..sources._common import IMAGE_EXTENSIONS

    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        return Gallery.load(path)
    if not path.is_dir():
        raise SameIdError(f"{path}: no such dataset dir, image folder or .npz gallery")
    embedder = create_backend("face_embedder", embedder_spec)
    if (path / "manifest.parquet").is_file():
        frame = pd.read_parquet(path / "manifest.parquet", columns=None)
        if not {"image", "identity"} <= set(frame.columns):
            raise SameIdError(f"{path / 'manifest.parquet'}: needs the columns image and identity")
        boxes = [_box(b) for b in frame["head_box"]] if "head_box" in frame else [None] * len(frame)
        found, vectors = embed_faces(frame["image"].astype(str).tolist(), boxes, embedder, EmbeddingCache(cache_dir))
        names = frame["identity"].astype(str).to_numpy()[found]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise SameIdError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder")
        found, vectors = embed_faces([str(p) for p in files], [None] * len(files), embedder,
                                     EmbeddingCache(cache_dir))
        names = np.array([p.relative_to(path).parts[0] if len(p.relative_to(path).parts) > 1 else p.stem
                          for p in files])[found]
    if not len(found):
        raise SameIdError(f"{path}: the face embedder {embedder_spec!r} found no face in any image")
    return identity_embeddings(vectors, names, embedder=embedder_spec, source=str(path))


# --- the command ------------------------------------------------------------------------------------------------


@dataclass
class LeakageConfig:
    synthetic: str
    real: str
    out: str
    threshold: float = DEFAULT_THRESHOLD
    synthetic_threshold: float | None = None
    face_embedder: str = "dlib"
    index: str = "flat"
    nprobe: int = DEFAULT_NPROBE
    nlist: int | None = None  # ivf lists (None: ~2 sqrt(m), at most 4,096)
    save_real: str | None = None
    cache_dir: str | None = None  # embedding cache (None: embed everything afresh, keep nothing)

    def checked(self) -> LeakageConfig:
        config = LeakageConfig(**asdict(self))
        if not (Path(config.synthetic) / "manifest.parquet").is_file():
            raise SameIdError(f"{config.synthetic}: not a dataset dir (no manifest.parquet); build it with sameid build")
        if not Path(config.real).exists():
            raise SameIdError(f"{config.real}: no such dataset dir, image folder or .npz gallery")
        out = Path(config.out)
        if out.resolve() == Path(config.synthetic).resolve():
            raise SameIdError("--out must be a new folder: the synthetic dataset is never changed in place")
        if out.exists() and any(out.iterdir()):
            raise SameIdError(f"{out} is not empty; choose a new --out folder")
        if config.index not in INDEXES:
            raise SameIdError(f"unknown index {config.index!r}: choose one of {', '.join(INDEXES)}")
        if config.nprobe < 1:
            raise SameIdError(f"--nprobe must be at least 1, not {config.nprobe}")
        if config.nlist is not None and config.nlist < 1:
            raise SameIdError(f"--nlist must be at least 1, not {config.nlist}")
        for name, value in (("--threshold", config.threshold), ("--synthetic-threshold", config.synthetic_threshold)):
            if value is not None and not (np.isfinite(value) and 0.0 <= value < 2.0):
                raise SameIdError(f"{name} must be a cosine distance in [0, 2), not {value!r}")
        if config.save_real is not None and not str(config.save_real).endswith(".npz"):
            raise SameIdError(f"--save-real {config.save_real}: a saved gallery is an .npz file")
        from ..backends.registry import available_backends

        if config.face_embedder.partition(":")[0] not in available_backends("face_embedder"):
            raise SameIdError(f"unknown face embedder {config.face_embedder!r}; choose one of "
                              f"{', '.join(available_backends('face_embedder'))}")
        return config


@dataclass
class LeakageResult:
    out: Path
    table: pd.DataFrame
    manifest: pd.DataFrame
    stats: dict

    def describe(self) -> str:
        removed = self.table[self.table["removed"]]
        lines = [f"checked {len(self.table)} identities; removed {len(removed)} "
                 f"({(removed['why'] == REAL_PERSON).sum()} real person, {(removed['why'] == DUPLICATE).sum()} "
                 f"duplicate, {(removed['why'] == NO_FACE).sum()} no face); kept {len(self.table) - len(removed)}"]
        for row in removed.head(20).itertuples():
            closest, distance = ((row.nearest_real, row.real_distance) if row.why == REAL_PERSON
                                 else (row.nearest_synthetic, row.synthetic_distance))
            lines.append(f"  removed {row.identity}: {row.why} (closest {closest}, cosine distance {distance:.4f})")
        if len(removed) > 20:
            lines.append(f"  ... {len(removed) - 20} more in {self.out / LEAKAGE_FILE}")
        lines.append(f"dataset without them: {self.out} (table: {self.out / LEAKAGE_FILE})")
        return "\n".join(lines)


def run_leakage(config: LeakageConfig) -> LeakageResult:
    """Check the synthetic dataset dir ``config.synthetic`` against ``config.real`` and write the new dataset dir
    ``config.out`` (module doc). Everything is read and checked before anything is written."""
    from ..dataset.stats import write_stats

    config = config.checked()
    synthetic_dir = Path(config.synthetic)
    manifest = pd.read_parquet(synthetic_dir / "manifest.parquet")
    rejected_path = synthetic_dir / "rejected.parquet"
    rejected = pd.read_parquet(rejected_path) if rejected_path.is_file() else pd.DataFrame(
        columns=["id", "image", "stage", "reason", "detail"])
    settings = read_dataset_settings(synthetic_dir)
    if "identity" not in manifest or "image" not in manifest:
        raise SameIdError(f"{synthetic_dir / 'manifest.parquet'}: needs the columns image and identity")

    real = read_gallery(config.real, config.face_embedder, config.cache_dir)
    if real.embedder and real.embedder != config.face_embedder:
        raise SameIdError(f"{config.real} holds {real.embedder!r} embeddings, but --face-embedder is "
                          f"{config.face_embedder!r}: use the same embedder for both")
    from ..backends.registry import create_backend

    embedder = create_backend("face_embedder", config.face_embedder)
    boxes = [_box(b) for b in manifest["head_box"]] if "head_box" in manifest else [None] * len(manifest)
    found, vectors = embed_faces(manifest["image"].astype(str).tolist(), boxes, embedder,
                                 EmbeddingCache(config.cache_dir))
    identities = manifest["identity"].astype(str).to_numpy()
    if len(found):
        synthetic = identity_embeddings(vectors, identities[found], embedder=config.face_embedder,
                                        source=str(synthetic_dir))
    else:
        synthetic = Gallery(np.zeros((0, real.vectors.shape[1]), dtype=np.float32), np.array([], dtype=str))
    table = check_identities(synthetic, real, config.threshold, config.synthetic_threshold, config.index, config.nprobe,
                             config.nlist)
    faceless = sorted(set(identities) - set(synthetic.names.tolist()))
    if faceless:
        table = pd.concat([table, pd.DataFrame({"identity": faceless, "removed": True, "why": NO_FACE})],
                          ignore_index=True).sort_values("identity", ignore_index=True)
    counts = manifest.groupby("identity").size()
    table.insert(1, "n_images", table["identity"].map(counts).astype("int64"))

    removed_ids = set(table.loc[table["removed"], "identity"])
    drop = manifest["identity"].astype(str).isin(removed_ids)
    why = dict(zip(table["identity"], table["why"], strict=True))
    detail = {row.identity: (f"closest real identity {row.nearest_real!r} at cosine distance {row.real_distance:.4f}"
                             if row.why == REAL_PERSON else
                             f"closest synthetic identity {row.nearest_synthetic!r} at cosine distance "
                             f"{row.synthetic_distance:.4f}" if row.why == DUPLICATE else
                             "the face embedder found no face in its images")
              for row in table[table["removed"]].itertuples()}
    leaked = manifest.loc[drop, ["id", "image", "identity"]]
    new_rejected = pd.concat([rejected[["id", "image", "stage", "reason", "detail"]], pd.DataFrame({
        "id": leaked["id"].astype(str), "image": leaked["image"].astype(str), "stage": "leakage",
        "reason": [f"identity leakage: {why[i]}" for i in leaked["identity"]],
        "detail": [detail[i] for i in leaked["identity"]],
    })], ignore_index=True)
    kept = manifest.loc[~drop].reset_index(drop=True)

    removed_rows = table[table["removed"]]
    section = {
        "real": real.source or str(config.real), "n_real": len(real), "embedder": config.face_embedder,
        "index": config.index if config.index == "flat" else
        f"ivf (nprobe {config.nprobe}{'' if config.nlist is None else f', nlist {config.nlist}'})",
        "threshold": config.threshold,
        "synthetic_threshold": config.threshold if config.synthetic_threshold is None else config.synthetic_threshold,
        "n_identities": int(len(table)),
        "removed_real": int((removed_rows["why"] == REAL_PERSON).sum()),
        "removed_synthetic": int((removed_rows["why"] == DUPLICATE).sum()),
        "removed_no_face": int((removed_rows["why"] == NO_FACE).sum()),
        "kept": int(len(table) - len(removed_rows)),
        "removed": [
            {"identity": r.identity, "why": r.why,
             "closest": (r.nearest_real if r.why == REAL_PERSON else r.nearest_synthetic if r.why == DUPLICATE else ""),
             "distance": float(r.real_distance if r.why == REAL_PERSON else r.synthetic_distance
                               if r.why == DUPLICATE else float("nan"))}
            for r in removed_rows.head(_CARD_ROWS).itertuples()],
        "removed_truncated": bool(len(removed_rows) > _CARD_ROWS),
    }
    for row in section["removed"]:  # JSON has no NaN
        row["distance"] = None if not math.isfinite(row["distance"]) else round(row["distance"], 6)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    new_settings = dict(settings)
    new_settings["leakage"] = {
        "synthetic": str(synthetic_dir.resolve()), "real": str(config.real), "threshold": config.threshold,
        "synthetic_threshold": section["synthetic_threshold"], "face_embedder": config.face_embedder,
        "index": config.index, "nprobe": config.nprobe, "nlist": config.nlist,
    }
    write_parquet_atomic(out / LEAKAGE_FILE, table)
    write_parquet_atomic(out / "manifest.parquet", kept)
    write_parquet_atomic(out / "rejected.parquet", new_rejected.fillna("").astype(str))
    write_json_atomic(out / DATASET_SETTINGS_FILE, new_settings)
    stats = write_stats(out, kept, new_rejected, build_config=new_settings, sections={"leakage": section})
    if config.save_real:
        real.save(config.save_real)
    return LeakageResult(out=out, table=table, manifest=kept, stats=json.loads(json.dumps(stats)))
