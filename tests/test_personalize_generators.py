"""The diffusion generators on tiny random diffusers models: DreamBooth-LoRA (peft), base-model negatives, a sameid
run and diffusers' IP-Adapter as reference-conditioned generators. Each writes the images it records."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sameid.personalize.instance import Instance
from sameid.personalize.synthetic import create_generator


@pytest.fixture
def instance(tmp_path):
    paths = []
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        path = tmp_path / "real" / f"r{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 64), colour).save(path)
        paths.append(str(path))
    return Instance(name="toy", category="figure", real=paths, masks=[None] * 3)


def check_images(records, out, count, role, generator):
    assert len(records) == count
    for record in records:
        assert record.role == role and record.generator == generator
        image = Image.open(out / record.image)
        assert image.size[0] > 0 and np.isfinite(np.asarray(image, np.float32)).all()
    assert len({r.seed for r in records}) == count


def test_dreambooth_lora_trains_saves_and_generates(instance, tmp_path, torch_one_thread):
    out = tmp_path / "out"
    generator = create_generator("dreambooth:tiny", train_steps=2, steps=2)
    records = generator.generate(instance, out / "db", 3, seed=0, out=out)
    check_images(records, out, 3, "positive", "dreambooth:tiny")
    assert (out / "db" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all("sks figure" in r.prompt for r in records) and records[0].sources == instance.real
    first = np.asarray(Image.open(out / records[0].image))
    # a rerun loads the saved LoRA and keeps the images already written
    (out / "db" / "0000.png").unlink()
    again = create_generator("dreambooth:tiny", train_steps=2, steps=2).generate(instance, out / "db", 3, seed=0,
                                                                                 out=out)
    assert [r.prompt for r in again] == [r.prompt for r in records]
    assert np.array_equal(np.asarray(Image.open(out / again[0].image)), first)


def test_base_model_negatives(instance, tmp_path, torch_one_thread):
    out = tmp_path / "out"
    records = create_generator("base:tiny", steps=2).generate(instance, out / "base", 2, seed=1, out=out)
    check_images(records, out, 2, "negative", "base:tiny")
    assert all("a figure" in r.prompt and "sks" not in r.prompt for r in records)


def test_reference_generator_from_a_sameid_run(instance, built_sample, tmp_path, torch_one_thread):
    from sameid.models.components import load_components, save_components
    from sameid.models.denoisers import create_denoiser
    from sameid.train.config import TrainConfig

    run = tmp_path / "run"
    components = load_components(tiny=True)
    save_components(components, run / "base")
    TrainConfig.from_flat({"dataset": str(built_sample.out), "out": str(run), "tiny": True, "n_references": 2,
                           "resolution": 32}).save(run / "config.yaml")
    create_denoiser("retrinet", components.unet, tiny=True).save_pretrained(run / "model")
    out = tmp_path / "out"
    records = create_generator(f"reference:{run}", steps=2).generate(instance, out / "ref", 2, seed=0, out=out)
    check_images(records, out, 2, "positive", f"reference:{run}")
    assert records[0].sources == instance.real


def test_ip_adapter_generator_with_diffusers(instance, tmp_path, torch_one_thread):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from sameid.models.components import load_components
    from sameid.models.denoisers import create_denoiser
    from sameid.personalize.reference import IPAdapterGenerator

    adapter = create_denoiser("ip-adapter", load_components(tiny=True, seed=1).unet, tiny=True)
    state: dict = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in adapter.adapter_state_dict().items():
        group, _, key = name.partition(".")
        state[group][key] = tensor
    parts = load_components(tiny=True)
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.noise_scheduler.config), safety_checker=None,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        image_encoder=adapter.image_encoder, requires_safety_checker=False)
    generator = IPAdapterGenerator("tiny", steps=2, pipeline=pipe, ip_adapter=state, subfolder="", weight_name="")
    generator.spec = "ip-adapter:tiny"
    out = tmp_path / "out"
    records = generator.generate(instance, out / "ip", 4, seed=0, out=out)
    check_images(records, out, 4, "positive", "ip-adapter:tiny")
    assert [r.sources for r in records] == [[instance.real[i % 3]] for i in range(4)]  # one real image in turn
