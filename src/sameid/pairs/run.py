"""The pairs stage as two calls: :func:`write_pairs` (``sameid pairs``) and :func:`run_audit` (``sameid audit``).

Each takes its settings, checks them and its inputs before writing anything, does the work, and returns a result
that describes itself (:meth:`PairsResult.describe`, :meth:`AuditResult.describe`), so the command line only parses
and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..atomic import check_writable
from ..errors import SameIdError
from .audit import DEFAULT_SIMILARITY_THRESHOLD, AuditReport, audit_pairs, embed_rows
from .dataset import PairsConfig, PairsDataset
from .manifest import load_manifest


def embedder_from_spec(spec: str | None):
    """``face:dlib``, ``face:arcface-onnx:<path>``, ``image:clip:<id or path>``, ``image:dino:<id or path>``;
    None or ``none``: no embedder."""
    if not spec or spec == "none":
        return None
    from ..backends.registry import create_backend

    kind, _, backend = spec.partition(":")
    kinds = {"face": "face_embedder", "image": "image_embedder"}
    if kind not in kinds or not backend:
        raise SameIdError(f"--embedder {spec!r}: write face:<face embedder> (face:dlib, face:arcface-onnx:<path>) "
                          "or image:<image embedder> (image:clip:<id or path>, image:dino:<id or path>)")
    return create_backend(kinds[kind], backend)


def _refuse_to_replace(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise SameIdError(f"{path} exists; pass --overwrite to replace it, or choose another --out")


def check_epochs(epochs: int) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise SameIdError(f"--epochs must be at least 1, got {epochs!r}")


@dataclass
class PairsResult:
    out: Path
    contact_sheet: Path
    config: PairsConfig  # as used: near_duplicate_bits resolved from the dataset when it was not set
    epochs: int
    targets: int
    examples: int
    short_identities: list[str]
    refused: int
    crop_fallbacks: int

    def describe(self) -> list[str]:
        c = self.config
        lines = [f"{self.examples} examples ({self.targets} targets x {self.epochs} epoch(s)), mode {c.mode}, task "
                 f"{c.task}, N={c.n_references}, near-duplicate threshold {c.near_duplicate_bits} bits: {self.out}"]
        short = self.short_identities
        if short:
            verb = ("sampled with replacement" if c.shortfall == "repeat"
                    else f"refused: {self.refused} target(s) left out")
            lines.append(f"{len(short)} identit{'y has' if len(short) == 1 else 'ies have'} fewer than "
                         f"{c.n_references} eligible references ({', '.join(short[:5])}"
                         f"{', ...' if len(short) > 5 else ''}): {verb}")
        if self.crop_fallbacks:
            lines.append(f"{self.crop_fallbacks} crop(s) fell back to 'figure' (reasons in the 'fallbacks' column)")
        lines.append(f"contact sheet: {self.contact_sheet}")
        return lines


def write_pairs(dataset: str | os.PathLike, config: PairsConfig, out: str | os.PathLike, *, epochs: int = 1,
                contact_sheet: str | os.PathLike | None = None, contact_sheet_examples: int = 6,
                embedder: str | None = None, overwrite: bool = False) -> PairsResult:
    """Sample ``epochs`` epochs of pairs from ``dataset`` and write them to ``out`` (parquet: ids, concepts, crop
    boxes) with a contact sheet (default ``<out>.contact_sheet.png``). ``embedder`` (a spec, see
    :func:`embedder_from_spec`) is what curriculum "embedding" orders by. Refuses to replace files unless
    ``overwrite``; nothing is written when anything is refused or fails: both files are made in memory first,
    then the contact sheet and last the pairs table are written atomically."""
    from ..atomic import write_atomic, write_parquet_atomic
    from .contact_sheet import render_contact_sheet

    check_epochs(epochs)
    if contact_sheet_examples < 0:
        raise SameIdError(f"--contact-sheet-examples must be 0 or more, got {contact_sheet_examples}")
    out = Path(out)
    sheet = Path(contact_sheet) if contact_sheet is not None else out.with_suffix(".contact_sheet.png")
    if sheet.resolve() == out.resolve():
        raise SameIdError(f"--contact-sheet {sheet} is --out; give the contact sheet its own path")
    check_writable(out, "--out")
    check_writable(sheet, "--contact-sheet")
    _refuse_to_replace(out, overwrite)
    _refuse_to_replace(sheet, overwrite)
    manifest = load_manifest(dataset)
    embeddings = None
    if config.curriculum == "embedding":
        model = embedder_from_spec(embedder)
        if model is None:
            raise SameIdError("--curriculum embedding needs --embedder (face:dlib, image:clip:<id or path>, ...)")
        embeddings = embed_rows(manifest, model, manifest.ids)
    examples = PairsDataset(manifest, config, embeddings=embeddings)
    if not len(examples):
        raise SameIdError(f"no examples: all {len(examples.refused)} targets of {dataset} have fewer than "
                          f"{config.n_references} eligible references; lower --n-references or use --shortfall "
                          "repeat")
    frame = examples.pairs_frame(epochs)
    picture = render_contact_sheet(examples.manifest, frame, examples=contact_sheet_examples)  # reads images
    sheet_existed = sheet.exists()
    write_atomic(sheet, lambda tmp: picture.save(tmp, format="PNG"), suffix=".png")
    try:
        write_parquet_atomic(out, frame)
    except BaseException:
        if not sheet_existed:  # ours alone: no half of a result is left behind
            sheet.unlink(missing_ok=True)
        raise
    short = sorted({manifest.identities[r] for r in range(len(manifest)) if examples.sampler.is_short(r)})
    return PairsResult(out=out, contact_sheet=sheet, config=examples.config, epochs=epochs, targets=len(examples),
                       examples=len(frame), short_identities=short, refused=len(examples.refused),
                       crop_fallbacks=sum(bool(reason) for row in frame["fallbacks"] for reason in row))


@dataclass
class AuditResult:
    report: AuditReport
    origin: str  # where the pairs came from
    near_duplicate_bits: int
    embedder: str | None = None
    embedded: int = 0
    embed_requested: int = 0
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    json_out: Path | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def leaking_pairs(self) -> int:
        return self.report.leaking_pairs

    @property
    def failed(self) -> bool:
        """A pair leaks or has a reference of another identity: ``--fail-on-leak`` exits 1."""
        return self.report.failed

    def to_json(self) -> str:
        return self.report.to_json()

    def describe(self) -> list[str]:
        summary = self.report.summary()
        lines = [f"pairs: {self.origin}",
                 f"{summary['pairs']} pairs, {summary['references']} references: {summary['leaking_pairs']} leaking "
                 f"pair(s), {summary['leaking_references']} leaking reference(s) (near-duplicate threshold "
                 f"{self.near_duplicate_bits} bits)"]
        lines += [f"  {reason}: {count}" for reason, count in summary["leak_reasons"].items()]
        lines.append(f"references of another identity than the target's: {summary['wrong_identity_references']} "
                     f"in {summary['wrong_identity_pairs']} pair(s)")
        if summary["cross_identity_similar_dropped"]:
            lines.append(f"  manifest 'similar' entries naming another identity (dropped, never sampled): "
                         f"{summary['cross_identity_similar_dropped']}")
        for error in self.report.identity_errors.head(3).itertuples():
            lines.append(f"  target {error.target_id} ({error.target_identity}): reference {error.reference_id} is "
                         f"{error.reference_identity}")
        if self.embedder is None:
            lines.append("embedding check: off (pass --embedder to compare embeddings too)")
        else:
            lines.append(f"embedding check: {self.embedded} of {self.embed_requested} images embedded with "
                         f"{self.embedder}, threshold {self.similarity_threshold}")
        lines.append(f"identities with fewer than {self.report.n_references} eligible references: "
                     f"{summary['identities_too_small']}")
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["crop_fallback_reasons"].items())
        lines.append(f"crops that fell back to 'figure': {summary['crop_fallbacks']}"
                     + (f" ({reasons})" if summary["crop_fallbacks"] else ""))
        if self.json_out is not None:
            lines.append(f"report: {self.json_out}")
        return lines


def run_audit(dataset: str | os.PathLike, *, pairs_file: str | os.PathLike | None = None,
              config: PairsConfig | None = None, epochs: int = 1, embedder: str | None = None,
              similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
              json_out: str | os.PathLike | None = None) -> AuditResult:
    """Audit the pairs in ``pairs_file`` (written by :func:`write_pairs`), or ``epochs`` epochs sampled here with
    ``config``, against ``dataset``; write the full report as JSON to ``json_out`` when given."""
    from ..atomic import write_text_atomic

    check_epochs(epochs)
    if json_out is not None:
        check_writable(Path(json_out), "--json")
    if pairs_file is not None:
        pairs_file = Path(pairs_file)
        if not pairs_file.is_file():
            raise SameIdError(f"--pairs {pairs_file}: no such file (write one with `sameid pairs`)")
    config = config or PairsConfig()
    manifest = load_manifest(dataset)
    config = config.with_dataset_settings(manifest)
    model = embedder_from_spec(embedder)
    if pairs_file is not None:
        try:
            frame = pd.read_parquet(pairs_file)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise SameIdError(f"--pairs {pairs_file}: not a readable parquet file ({exc})") from None
        origin = str(pairs_file)
    else:
        frame = PairsDataset(manifest, config).pairs_frame(epochs)
        origin = (f"sampled here (mode {config.mode}, task {config.task}, N={config.n_references}, seed "
                  f"{config.seed}, {epochs} epoch(s))")
    embeddings, requested = None, 0
    if model is not None and len(frame):
        ids = set(frame["target_id"].astype(str)) | {str(i) for refs in frame["reference_ids"] for i in refs}
        requested = len(ids)
        embeddings = embed_rows(manifest, model, ids)
    report = audit_pairs(manifest, frame, near_duplicate_bits=config.near_duplicate_bits,
                         n_references=config.n_references if pairs_file is None else None, embeddings=embeddings,
                         similarity_threshold=similarity_threshold)
    result = AuditResult(report=report, origin=origin, near_duplicate_bits=config.near_duplicate_bits,
                         embedder=embedder if model is not None else None, embedded=len(embeddings or {}),
                         embed_requested=requested, similarity_threshold=similarity_threshold,
                         json_out=None if json_out is None else Path(json_out))
    if result.json_out is not None:
        write_text_atomic(result.json_out, result.to_json())
    return result
