"""Generation from a finished run into the generations manifest that ``sameid eval`` reads (:mod:`.run`;
RetriBooru, arXiv 2312.02521, §3.1, A.3). The pipeline itself is :mod:`sameid.pipelines`. Importing this package
needs torch and diffusers (the ``ml`` extra).
"""

from .run import GenerationResult, generate_manifest, load_run

__all__ = ["GenerationResult", "generate_manifest", "load_run"]
