"""Personalized representations (Personalized Representation from Personalized Generation, arXiv 2412.16156):
synthetic positives of one instance, contrastive LoRA fine-tuning of a backbone, and its evaluation against the
pretrained backbone. The stage function is :func:`sameid.personalize.run.personalize`."""

from .finetune import FinetuneConfig
from .run import PersonalizeConfig, PersonalizeResult, personalize

__all__ = ["FinetuneConfig", "PersonalizeConfig", "PersonalizeResult", "personalize"]
