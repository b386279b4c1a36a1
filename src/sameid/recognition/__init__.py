"""Scoring a dataset by training a face-recognition model on it (Hybrid Generative Fusion, arXiv 2508.10672:
the measure of a dataset is the verification accuracy of a recognition model trained on it; the curriculum vs
shuffle check). An IResNet backbone, an ArcFace or CosFace margin loss from pytorch-metric-learning, verification on
pairs in LFW's ``pairs.txt`` format."""
