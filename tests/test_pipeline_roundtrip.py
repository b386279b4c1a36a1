"""A reference pipeline saved with ``save_pretrained`` loads through diffusers' own ``DiffusionPipeline.from_pretrained``
(and ``ReferencePipeline.from_pretrained``) and gives bit-identical images for the same seed, for RetriNet and both
baselines (issue 10, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from sameid.models.components import load_components  # noqa: E402
from sameid.models.denoisers import KINDS, create_denoiser  # noqa: E402
from sameid.pipelines import ReferencePipeline  # noqa: E402

SIDE = 32


def references() -> list[list[Image.Image]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for w, h in ((20, 40), (33, 17))]
    return [images, images[:1]]  # the second row is padded


def perturbed_denoiser(kind: str, unet):
    """A denoiser whose every weight differs from the base's (decoder trained, references read)."""
    torch.manual_seed(0)
    denoiser = create_denoiser(kind, unet, tiny=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in denoiser.set_trainable("full"):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return denoiser.requires_grad_(False).eval()


def generate(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(["a girl", "a boy"], references(), concepts=[["face", "clothes"], ["figure"]], height=SIDE,
                    width=SIDE, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(3)).images


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_diffusion_pipeline_from_pretrained_gives_identical_images(kind, tmp_path):
    from diffusers import DiffusionPipeline

    components = load_components(tiny=True, seed=0)
    pipeline = ReferencePipeline.from_components(components, perturbed_denoiser(kind, components.unet))
    expected = generate(pipeline)
    pipeline.save_pretrained(tmp_path / "pipe")

    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["denoiser"][1] == type(pipeline.denoiser).__name__ and index["denoiser"][0].startswith("sameid.")
    assert index["_class_name"] == ["pipeline_reference", "ReferencePipeline"]

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(loaded) is ReferencePipeline and type(loaded.denoiser) is type(pipeline.denoiser)
    assert loaded.denoiser.decoder_trained
    assert np.array_equal(generate(loaded), expected)

    direct = ReferencePipeline.from_pretrained(tmp_path / "pipe")  # runs no code from the folder
    assert np.array_equal(generate(direct), expected)
