"""sameid: same-identity datasets, leakage-free training pairs, retrieval-augmented personalization and evaluation.

A reference image shows the same identity as the target, but it is never the target.
"""

__version__ = "0.1.0"
