"""Leakage-free training examples from a dataset dir (RetriBooru, arXiv 2312.02521, §3.1, §5 and appendix A.4).

A reference shows the same identity as the target, but it is never the target: :mod:`.sampler` draws references,
:mod:`.concepts` crops them to "face", "clothes" or "figure", :mod:`.dataset` turns them into
:class:`sameid.records.TrainingExample` for a torch DataLoader, :mod:`.audit` checks a set of pairs for leakage.
"""

from ..references import normalize_pixels
from .concepts import ConceptCrop, concept_crop
from .dataset import PairsConfig, PairsDataset, collate_examples, sample_pairs
from .manifest import DatasetManifest, load_manifest
from .sampler import ReferenceSampler

__all__ = [
    "ConceptCrop", "DatasetManifest", "PairsConfig", "PairsDataset", "ReferenceSampler", "collate_examples",
    "concept_crop", "load_manifest", "normalize_pixels", "sample_pairs",
]
