"""Synthetic identities, offline augmentation and the curriculum written into a dataset (sameid.synth)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image, ImageOps

from sameid.errors import SameIdError
from sameid.pairs.dataset import PairsConfig, PairsDataset
from sameid.pairs.manifest import load_manifest
from sameid.synth.augment import AugmentConfig, augment_dataset
from sameid.synth.curriculum import rank_identities
from synth_fixtures import colour_dataset, save_tiny_ip_adapter, save_tiny_text_to_image


# -- augmentation ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("real") / "ds", identities=4, per_identity=3, spread_step=3.0)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("syn") / "ds", identities=2, per_identity=3, source="synthetic",
                          prefix="syn", seed=5)


@pytest.fixture(scope="module")
def augmented(real_dir, synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("aug") / "fused"
    return augment_dataset(AugmentConfig(inputs=(str(real_dir), str(synthetic_dir)), out=str(out), per_identity=7,
                                         progress=False))


def test_augmentation_fills_every_identity_to_the_count(augmented):
    manifest = augmented.manifest
    assert manifest.groupby("identity").size().tolist() == [7] * 6
    assert augmented.n_original == 18 and augmented.n_augmented == 24
    marked = manifest[manifest["augmented"]]
    assert marked["augmented_from"].notna().all() and manifest.loc[~manifest["augmented"], "augmented_from"].isna().all()
    assert set(manifest["source"]) == {"real", "synthetic"}
    for image in marked["image"]:
        assert Image.open(image).size == (48, 48)
    # the dataset dir is an ordinary one: the pairs stage reads it
    assert len(load_manifest(augmented.out)) == 42
    assert (augmented.out / "README.md").is_file() and (augmented.out / "rejected.parquet").is_file()


def test_augmentations_never_reference_their_own_target(augmented):
    manifest = load_manifest(augmented.out)
    frame = manifest.frame
    family = [a if isinstance(a, str) else i for a, i in zip(frame["augmented_from"], frame["id"])]
    dataset = PairsDataset(manifest, PairsConfig(n_references=2, resolution=32))
    for row in range(len(manifest)):
        for other in dataset.sampler.eligible[row]:
            assert family[other] != family[row], (manifest.ids[row], manifest.ids[other])
        assert dataset.sampler.eligible[row], "every row keeps a leakage-free reference"


def test_augmentation_is_deterministic_and_resumes(augmented, real_dir, synthetic_dir, tmp_path):
    config = AugmentConfig(inputs=(str(real_dir), str(synthetic_dir)), out=str(tmp_path / "again"), per_identity=7,
                           progress=False)
    again = augment_dataset(config)
    assert again.manifest["phash"].tolist() == augmented.manifest["phash"].tolist()
    # a killed run: remove some augmented files and the manifest, resume
    removed = sorted((tmp_path / "again" / "augmented").glob("*.png"))[:3]
    for path in removed:
        path.unlink()
    (tmp_path / "again" / "manifest.parquet").unlink()
    resumed = augment_dataset(config, resume=True)
    assert resumed.manifest["phash"].tolist() == augmented.manifest["phash"].tolist()
    with pytest.raises(SameIdError, match="not empty"):
        augment_dataset(config)


def test_augment_refuses_bad_inputs(real_dir, augmented, tmp_path):
    with pytest.raises(SameIdError, match="not a dataset dir"):
        AugmentConfig(inputs=(str(tmp_path),), out=str(tmp_path / "x"))
    with pytest.raises(SameIdError, match="already augmented"):
        augment_dataset(AugmentConfig(inputs=(str(augmented.out),), out=str(tmp_path / "y"), progress=False))
    with pytest.raises(SameIdError, match="per_identity"):
        AugmentConfig(inputs=(str(real_dir),), out=str(tmp_path / "z"), per_identity=0)
    assert not (tmp_path / "y").exists()


# -- curriculum ----------------------------------------------------------------------------------------------------------
def test_rank_puts_sources_first_then_spread():
    spread = {"r-wide": 20.0, "r-tight": 5.0, "s-wide": 30.0, "s-tight": 1.0, "r-unknown": float("inf")}
    sources = {"r-wide": "real", "r-tight": "real", "s-wide": "synthetic", "s-tight": "synthetic", "r-unknown": "real"}
    ranks = rank_identities(spread, sources, ("synthetic", "real"))
    assert sorted(ranks, key=ranks.get) == ["s-tight", "s-wide", "r-tight", "r-wide", "r-unknown"]


def test_curriculum_is_written_and_training_reads_it(augmented):
    manifest = augmented.manifest
    ranks = manifest.drop_duplicates("identity").set_index("identity")["curriculum_rank"]
    sources = manifest.drop_duplicates("identity").set_index("identity")["source"]
    spread = manifest.drop_duplicates("identity").set_index("identity")["curriculum_spread"]
    order = ranks.sort_values().index.tolist()
    assert [sources[i] for i in order] == ["synthetic"] * 2 + ["real"] * 4
    real = [i for i in order if sources[i] == "real"]
    assert [spread[i] for i in real] == sorted(spread[i] for i in real)  # spread measured on originals
    dataset = PairsDataset(augmented.out, PairsConfig(curriculum="dataset", n_references=2, resolution=32))
    seen = list(dict.fromkeys(dataset.manifest.identities[r] for r in dataset.target_rows))
    assert seen == order
    with pytest.raises(SameIdError, match="curriculum_rank"):
        PairsDataset(_plain(augmented), PairsConfig(curriculum="dataset"))


def _plain(augmented):
    manifest = load_manifest(augmented.out)
    manifest.frame = manifest.frame.drop(columns=["curriculum_rank"])
    return manifest


# -- identity screening with real faces (dlib) ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces():
    pytest.importorskip("dlib")
    import matplotlib.cbook
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = Image.open(handle).convert("RGB")
    return astronaut, hopper


def test_screening_drops_drift_near_duplicates_and_faceless(faces):
    from sameid.backends.face_dlib import DlibFaceEmbedder
    from sameid.synth.identities import DRIFT, NEAR_DUPLICATE, NO_FACE, screen_variants

    astronaut, hopper = faces
    moved = ImageOps.mirror(astronaut).rotate(8, fillcolor=(0, 0, 0))  # same person, another image
    copy = astronaut.resize((500, 500)).resize(astronaut.size)  # a re-encode of the reference
    blank = Image.new("RGB", (256, 256), (200, 180, 160))
    verdicts = screen_variants(astronaut, [moved, hopper, copy, blank], DlibFaceEmbedder(), 0.91, 6)
    assert [v.keep for v in verdicts] == [True, False, False, False]
    assert [v.reason for v in verdicts[1:]] == [DRIFT, NEAR_DUPLICATE, NO_FACE]
    assert verdicts[0].similarity > 0.95 > 0.91 > verdicts[1].similarity


# -- sameid synth on tiny models ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, real_dir):
    pytest.importorskip("diffusers")
    import torch

    from sameid.models.components import load_components, save_components
    from sameid.models.retrinet import RetriNetDenoiser
    from sameid.testing import save_tiny_clip
    from sameid.train.config import TrainConfig

    root = tmp_path_factory.mktemp("models")
    t2i = save_tiny_text_to_image(root / "t2i")
    components = load_components(tiny=True, seed=0)
    run = root / "run"
    save_components(components, run / "base")
    TrainConfig.from_flat({"dataset": str(real_dir), "out": str(run), "tiny": True, "n_references": 1,
                           "resolution": 32}).save(run / "config.yaml")
    torch.manual_seed(0)
    RetriNetDenoiser.from_unet(components.unet).save_pretrained(run / "model")
    save_tiny_clip(root / "clip")
    adapter = save_tiny_ip_adapter(root / "ip-adapter", components.unet)
    return {"t2i": t2i, "run": run, "clip": root / "clip", "adapter": adapter}


def synth_config(tiny_models, out, **options):
    from sameid.synth.identities import SynthConfig

    values = {"out": str(out), "text_to_image": str(tiny_models["t2i"]), "expander": f"run:{tiny_models['run']}",
              "identities": 3, "variants": 3, "size": 32, "steps": 2, "guidance": 2.0,
              "identity_check": f"image:clip:{tiny_models['clip']}", "min_similarity": 0.0, "progress": False,
              "device": "cpu", **options}
    return SynthConfig(**values)


def test_synth_writes_a_dataset_dir_and_resumes(tiny_models, tmp_path, torch_one_thread):
    from sameid.synth.identities import synthesize_identities

    config = synth_config(tiny_models, tmp_path / "synth")
    result = synthesize_identities(config)
    manifest = load_manifest(result.out)
    frame = manifest.frame
    assert set(frame["source"]) == {"synthetic"}
    assert frame["identity"].nunique() + result.rejected["reason"].eq("no variant kept").sum() == 3
    assert frame.groupby("identity").size().max() <= 4
    assert all(frame["id"].str.endswith("/reference").groupby(frame["identity"]).sum() == 1)
    rejected = pd.read_parquet(result.out / "rejected.parquet")
    assert set(rejected["reason"]) <= {"identity drift", "near-duplicate", "no face found", "no variant kept"}
    settings = json.loads((result.out / "build_settings.json").read_text())
    assert settings["synth"]["identities"] == 3
    # killed after the first identity: the rest are made again, identically; the first is skipped
    digest = {p.name: p.read_bytes() for p in (result.out / "generated").rglob("*.png")}
    records = sorted((result.out / ".work" / "identities").glob("*.json"))
    for record in records[1:]:
        record.unlink()
    (result.out / "manifest.parquet").unlink()
    resumed = synthesize_identities(config, resume=True)
    assert resumed.skipped == 1
    assert resumed.manifest["phash"].tolist() == result.manifest["phash"].tolist()
    assert {p.name: p.read_bytes() for p in (result.out / "generated").rglob("*.png")} == digest
    # a drift threshold no variant can meet drops every identity, each with its reason
    strict = synthesize_identities(synth_config(tiny_models, tmp_path / "strict", identities=1, min_similarity=1.0))
    assert len(strict.manifest) == 0
    assert set(strict.rejected["reason"]) == {"identity drift", "no variant kept"}


def test_synth_with_an_ip_adapter_pipeline(tiny_models, tmp_path, torch_one_thread):
    from sameid.synth.identities import synthesize_identities

    config = synth_config(tiny_models, tmp_path / "ip", identities=1, variants=2, expander="ip-adapter",
                          ip_adapter=str(tiny_models["adapter"]), ip_adapter_weight="ip-adapter_tiny.safetensors")
    result = synthesize_identities(config)
    assert len(result.manifest) + len(result.rejected) == 3
    assert (result.out / "generated").is_dir()


def test_synth_refuses_bad_settings(tiny_models, tmp_path):
    with pytest.raises(SameIdError, match="expander"):
        synth_config(tiny_models, tmp_path / "a", expander="vec2face")
    with pytest.raises(SameIdError, match="training run dir"):
        synth_config(tiny_models, tmp_path / "a", expander=f"run:{tmp_path}")
    with pytest.raises(SameIdError, match="identity-check"):
        synth_config(tiny_models, tmp_path / "a", identity_check="dlib")
    assert not (tmp_path / "a").exists()


def test_attributes_are_drawn_from_the_seed():
    from sameid.synth.identities import identity_attributes, reference_prompt, variant_prompts

    assert identity_attributes(0, 5) == identity_attributes(0, 5)
    prompts = variant_prompts(identity_attributes(0, 5), 4, 0, 5)
    assert len(set(prompts)) == 4 and "portrait" in reference_prompt(identity_attributes(0, 5))
    assert len({json.dumps(identity_attributes(0, i)) for i in range(30)}) > 10
