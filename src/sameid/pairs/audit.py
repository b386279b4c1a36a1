"""Leakage audit of training pairs (RetriBooru, arXiv 2312.02521, §3.1: the -a setting leaks the target into its
reference; -b must not).

A pair leaks when a reference is the target, is listed as its near-duplicate, has a perceptual hash within
``near_duplicate_bits`` of it, or (when embeddings are given) has an embedding cosine similarity at or above
``similarity_threshold``. The audit also lists identities too small for N references and crops that fell back to
"figure". In ``identity`` mode a correct sampler yields zero leaks; in ``same`` mode every pair leaks by design.

The other half of the rule is checked too: every reference must show the target's identity (the manifest's
``identity`` column). A reference of another identity is an *identity error* (a hand-edited ``similar`` list, a
pairs table from another dataset): it is listed apart from the leaks, and ``sameid audit --fail-on-leak`` fails on
either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import SchemaError
from .manifest import DatasetManifest, dataset_near_duplicate_bits
from .sampler import ReferenceSampler

SELF = "reference is the target"
LISTED = "listed near-duplicate"
PHASH = "perceptual hash within threshold"
EMBEDDING = "embedding similarity above threshold"
OTHER_IDENTITY = "reference is another identity"
DEFAULT_SIMILARITY_THRESHOLD = 0.95
IDENTITY_ERROR_COLUMNS = ("epoch", "index", "target_id", "reference_id", "slot", "target_identity",
                          "reference_identity")


@dataclass
class AuditReport:
    """``leaks``: one row per leaking (pair, reference) with its reasons; ``identity_errors``: one row per
    reference whose identity is not the target's; ``small_identities``: identities whose smallest
    eligible-reference count is below N; ``crop_fallbacks``: references whose crop fell back."""

    pairs: int
    references: int
    n_references: int
    leaks: pd.DataFrame
    small_identities: pd.DataFrame
    crop_fallbacks: pd.DataFrame
    embeddings_checked: bool
    identity_errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(IDENTITY_ERROR_COLUMNS)))
    cross_identity_similar: int = 0  # manifest ``similar`` entries naming another identity, dropped at load

    @property
    def leaking_pairs(self) -> int:
        return int(self.leaks[["epoch", "index"]].drop_duplicates().shape[0]) if len(self.leaks) else 0

    @property
    def wrong_identity_pairs(self) -> int:
        """Pairs with at least one reference of another identity than the target's."""
        if not len(self.identity_errors):
            return 0
        return int(self.identity_errors[["epoch", "index"]].drop_duplicates().shape[0])

    @property
    def failed(self) -> bool:
        """Whether any pair leaks or has a reference of another identity (what ``--fail-on-leak`` fails on)."""
        return bool(self.leaking_pairs or self.wrong_identity_pairs)

    def summary(self) -> dict:
        reasons = {}
        for value in self.leaks.get("reasons", []):
            for reason in value:
                reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "pairs": self.pairs, "references": self.references, "n_references": self.n_references,
            "leaking_pairs": self.leaking_pairs, "leaking_references": int(len(self.leaks)),
            "leak_reasons": reasons, "embeddings_checked": self.embeddings_checked,
            "wrong_identity_pairs": self.wrong_identity_pairs,
            "wrong_identity_references": int(len(self.identity_errors)),
            "cross_identity_similar_dropped": self.cross_identity_similar,
            "identities_too_small": int(len(self.small_identities)),
            "crop_fallbacks": int(len(self.crop_fallbacks)),
            "crop_fallback_reasons": {str(k): int(v) for k, v in
                                      self.crop_fallbacks["reason"].value_counts().items()}
            if len(self.crop_fallbacks) else {},
        }

    def to_json(self) -> str:
        return json.dumps({
            "summary": self.summary(),
            "leaks": self.leaks.head(1000).to_dict(orient="records"),
            "identity_errors": self.identity_errors.head(1000).to_dict(orient="records"),
            "small_identities": self.small_identities.to_dict(orient="records"),
            "crop_fallbacks": self.crop_fallbacks.head(1000).to_dict(orient="records"),
        }, indent=2, default=_plain)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def audit_pairs(manifest: DatasetManifest, pairs: pd.DataFrame,
                near_duplicate_bits: int | None = None, n_references: int | None = None,
                embeddings: dict[str, np.ndarray] | None = None,
                similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> AuditReport:
    """Audit a pairs table (as written by ``sameid pairs``) against the dataset it was drawn from.

    ``near_duplicate_bits`` None: the threshold the dataset dir was built with
    (:func:`sameid.pairs.manifest.dataset_near_duplicate_bits`)."""
    if near_duplicate_bits is None:
        near_duplicate_bits = dataset_near_duplicate_bits(manifest)
    for column in ("target_id", "reference_ids"):
        if column not in pairs.columns:
            raise SchemaError(f"pairs table: missing required column {column!r}")
    not_lists = [position for position, value in enumerate(pairs["reference_ids"])
                 if value is None or isinstance(value, (str, bytes, float)) or not hasattr(value, "__len__")]
    if not_lists:
        shown = ", ".join(str(position) for position in not_lists[:3])
        raise SchemaError(f"pairs table: column 'reference_ids' is not a list of ids in {len(not_lists)} row(s) "
                          f"(row number {shown}{', ...' if len(not_lists) > 3 else ''}); write pairs with "
                          "`sameid pairs`")
    if n_references is None:
        n_references = int(pairs["reference_ids"].map(len).max()) if len(pairs) else 1
    vectors = {}
    if embeddings:
        vectors = {key: np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for key, v in embeddings.items()
                   if v is not None and np.linalg.norm(v) > 0}
    epochs = pairs["epoch"] if "epoch" in pairs.columns else pd.Series(0, index=pairs.index)
    indices = pairs["index"] if "index" in pairs.columns else pd.Series(range(len(pairs)), index=pairs.index)
    leaks, wrong, fallbacks, total = [], [], [], 0
    for position, (target_id, references) in enumerate(zip(pairs["target_id"], pairs["reference_ids"])):
        target = _row(manifest, target_id)
        for slot, reference_id in enumerate(references):
            total += 1
            reference = _row(manifest, reference_id)
            if manifest.identities[reference] != manifest.identities[target]:
                wrong.append({"epoch": int(epochs.iloc[position]), "index": int(indices.iloc[position]),
                              "target_id": str(target_id), "reference_id": str(reference_id), "slot": slot,
                              "target_identity": manifest.identities[target],
                              "reference_identity": manifest.identities[reference]})
            distance = (manifest.phash[target] ^ manifest.phash[reference]).bit_count()
            reasons = []
            if reference == target:
                reasons.append(SELF)
            if reference in manifest.near_duplicates[target]:
                reasons.append(LISTED)
            if distance <= near_duplicate_bits:
                reasons.append(PHASH)
            similarity = None
            if str(target_id) in vectors and str(reference_id) in vectors:
                similarity = float(vectors[str(target_id)] @ vectors[str(reference_id)])
                if similarity >= similarity_threshold:
                    reasons.append(EMBEDDING)
            if reasons:
                leaks.append({"epoch": int(epochs.iloc[position]), "index": int(indices.iloc[position]),
                              "target_id": str(target_id), "reference_id": str(reference_id), "slot": slot,
                              "phash_distance": distance, "similarity": similarity, "reasons": reasons})
        if "fallbacks" in pairs.columns:
            row = pairs.iloc[position]
            for slot, reason in enumerate(row["fallbacks"]):
                if reason:
                    fallbacks.append({"target_id": str(target_id), "reference_id": str(references[slot]),
                                      "requested": row["requested_concepts"][slot], "concept": row["concepts"][slot],
                                      "reason": reason})
    # Every subject of every multi-subject row: its reference pool (sameid.pairs.multi_subject).
    from .multi_subject import subject_reference_leaks

    leaks.extend(subject_reference_leaks(manifest, near_duplicate_bits).to_dict("records"))
    sampler = ReferenceSampler(manifest, "identity", n_references, "repeat", near_duplicate_bits)
    small = []
    from ..dataset.subjects import is_multi_subject

    multi = is_multi_subject(manifest.frame)
    for identity, rows in manifest.identity_rows().items():
        if multi[rows[0]]:
            continue  # a multi-subject row's pools are per subject (above)
        eligible = min(len(sampler.eligible[r]) for r in rows)
        if eligible < n_references:
            small.append({"identity": identity, "images": len(rows), "min_eligible_references": eligible,
                          "n_references": n_references})
    return AuditReport(
        pairs=len(pairs), references=total, n_references=n_references,
        leaks=pd.DataFrame(leaks, columns=["epoch", "index", "target_id", "reference_id", "slot", "phash_distance",
                                           "similarity", "reasons"]),
        small_identities=pd.DataFrame(small, columns=["identity", "images", "min_eligible_references",
                                                      "n_references"]),
        crop_fallbacks=pd.DataFrame(fallbacks, columns=["target_id", "reference_id", "requested", "concept",
                                                        "reason"]),
        embeddings_checked=bool(vectors),
        identity_errors=pd.DataFrame(wrong, columns=list(IDENTITY_ERROR_COLUMNS)),
        cross_identity_similar=len(manifest.cross_identity_similar),
    )


def _row(manifest: DatasetManifest, identifier) -> int:
    row = manifest.row_of.get(str(identifier))
    if row is None:
        raise SchemaError(f"pairs table names id {identifier!r}, which is not in {manifest.root / 'manifest.parquet'}")
    return row


def embed_rows(manifest: DatasetManifest, embedder, ids, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Embeddings of the images ``ids``, keyed by id: a face embedder (``FaceEmbedder.embed`` with the head box;
    images without a face are left out) or an image embedder (``ImageEmbedder.embed_images``, whole image)."""
    from ..images import load_image

    identifiers = sorted(set(map(str, ids)))
    for identifier in identifiers:
        _row(manifest, identifier)
    vectors = {}
    if hasattr(embedder, "embed_images"):
        for start in range(0, len(identifiers), batch_size):
            chunk = identifiers[start:start + batch_size]
            images = [load_image(manifest.image_paths[manifest.row_of[i]])[0] for i in chunk]
            vectors.update(zip(chunk, np.asarray(embedder.embed_images(images))))
        return vectors
    for identifier in identifiers:
        row = manifest.row_of[identifier]
        image, _ = load_image(manifest.image_paths[row])
        vector = embedder.embed(image, manifest.head_boxes[row])
        if vector is not None:
            vectors[identifier] = np.asarray(vector)
    return vectors
