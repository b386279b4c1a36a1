"""Synthetic same-identity data after Hybrid Generative Fusion (arXiv 2508.10672): new identities from a
text-to-image model expanded by a reference-conditioned generator, offline augmentation to a fixed number of images
per identity, a curriculum written into the dataset, and the identity-leakage check that keeps them synthetic
(:mod:`.leakage`). Each stage function writes an ordinary dataset dir."""
