"""Issue 3, the remaining rules: shortfall policies, curricula, prompt drop, contact sheet, embedding audit, the
``same`` mode audit and multitask.

Most tests use small dataset dirs written here (a manifest with the required columns and 48x64 PNG colour fields),
so that which image is a near-duplicate of which, and which identity is short of references, is known exactly.
"""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from sameid.errors import SameIdError
from sameid.images import load_image, perceptual_hash
from sameid.pairs.audit import EMBEDDING, SELF, audit_pairs
from sameid.pairs.contact_sheet import contact_sheet
from sameid.pairs.curriculum import curriculum_order
from sameid.pairs.dataset import PairsConfig, PairsDataset, sample_pairs
from sameid.pairs.manifest import load_manifest
from sameid.pairs.sampler import DEFAULT_NEAR_DUPLICATE_BITS, ReferenceSampler, ReferenceShortfallError

WIDTH, HEIGHT = 48, 64
HEAD_BOX = [16.0, 2.0, 32.0, 18.0]  # leaves a clothes region below it: composition crops both concepts


def colour_field(rng: np.random.Generator) -> np.ndarray:
    """A smooth random RGB field (a 3x4 grid upsampled): distinct fields have distant perceptual hashes."""
    grid = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((WIDTH, HEIGHT), Image.BILINEAR))


def write_dataset(root, identities: dict[str, list[np.ndarray]], near_duplicates=(), extra=None):
    """A dataset dir: ``identities`` maps identity -> its images (ids ``<identity>_<k>``); ``near_duplicates``
    lists id pairs the manifest marks as near-duplicates (both ways); ``extra`` maps a column to a function of
    (identity, k). Returns the dataset dir."""
    (root / "images").mkdir(parents=True)
    listed = {}
    for a, b in near_duplicates:
        listed.setdefault(a, []).append(b)
        listed.setdefault(b, []).append(a)
    rows = []
    for identity, images in identities.items():
        ids = [f"{identity}_{k}" for k in range(len(images))]
        for k, (identifier, pixels) in enumerate(zip(ids, images)):
            image = Image.fromarray(pixels)
            image.save(root / "images" / f"{identifier}.png")
            row = {"id": identifier, "image": f"images/{identifier}.png", "identity": identity,
                   "similar": [o for o in ids if o != identifier], "caption": f"caption of {identifier}",
                   "tags": ["1girl"], "head_box": HEAD_BOX, "mask": None, "width": WIDTH, "height": HEIGHT,
                   "phash": perceptual_hash(image), "near_duplicates": listed.get(identifier, [])}
            for column, value_of in (extra or {}).items():
                row[column] = value_of(identity, k)
            rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def shortfall_dir(tmp_path_factory):
    """A: 3 images (2 eligible references each). B: 6 images, b_0 and b_5 listed as near-duplicates (each keeps
    4 eligible). C: 5 images, c_4 a brightened copy of c_0 (a perceptual-hash near-duplicate nobody listed), so
    c_0 and c_4 keep 3 eligible and c_1..c_3 keep 4."""
    rng = np.random.default_rng(7)
    c = [colour_field(rng) for _ in range(4)]
    c.append(np.clip(c[0].astype(np.int16) + 3, 0, 255).astype(np.uint8))
    identities = {"a": [colour_field(rng) for _ in range(3)], "b": [colour_field(rng) for _ in range(6)], "c": c}
    return write_dataset(tmp_path_factory.mktemp("shortfall"), identities, near_duplicates=[("b_0", "b_5")])


@pytest.fixture(scope="module")
def shortfall_manifest(shortfall_dir):
    manifest = load_manifest(shortfall_dir)
    # the premises: c_4 is a near-duplicate of c_0 by hash alone, and every other pair is far apart
    for i in range(len(manifest)):
        for j in range(i + 1, len(manifest)):
            bits = (manifest.phash[i] ^ manifest.phash[j]).bit_count()
            if {manifest.ids[i], manifest.ids[j]} == {"c_0", "c_4"}:
                assert bits <= DEFAULT_NEAR_DUPLICATE_BITS
            else:
                assert bits > DEFAULT_NEAR_DUPLICATE_BITS, (manifest.ids[i], manifest.ids[j])
    return manifest


SHORT_ELIGIBLE = {"a_0": {"a_1", "a_2"}, "a_1": {"a_0", "a_2"}, "a_2": {"a_0", "a_1"},
                  "c_0": {"c_1", "c_2", "c_3"}, "c_4": {"c_1", "c_2", "c_3"}}
SHORT = set(SHORT_ELIGIBLE)
FORBIDDEN = {("b_0", "b_5"), ("b_5", "b_0"), ("c_0", "c_4"), ("c_4", "c_0")}


def test_shortfall_repeat_samples_with_replacement_and_never_leaks(shortfall_manifest):
    manifest = shortfall_manifest
    pairs = sample_pairs(manifest, PairsConfig(n_references=4, shortfall="repeat", task="composition"), epochs=20)
    assert set(pairs["target_id"]) == set(manifest.ids)
    for row in pairs.itertuples():
        references = list(row.reference_ids)
        assert len(references) == 4
        assert row.target_id not in references
        assert all(ref.split("_")[0] == row.target_id.split("_")[0] for ref in references)
        assert not {(row.target_id, ref) for ref in references} & FORBIDDEN
        if row.target_id in SHORT:
            # fewer than 4 eligible: repeats, but every eligible reference is drawn before any repeats
            assert set(references) == SHORT_ELIGIBLE[row.target_id] and len(set(references)) < len(references)
        else:
            assert len(set(references)) == 4
    report = audit_pairs(manifest, pairs, n_references=4)
    assert report.leaking_pairs == 0
    assert set(report.small_identities["identity"]) == {"a", "c"}
    assert dict(zip(report.small_identities["identity"], report.small_identities["min_eligible_references"])) == {
        "a": 2, "c": 3}


def test_shortfall_refuse_leaves_short_targets_out_and_lists_them(shortfall_manifest):
    manifest = shortfall_manifest
    dataset = PairsDataset(manifest, PairsConfig(n_references=4, shortfall="refuse"))
    assert set(dataset.refused) == SHORT
    assert len(dataset) == len(manifest) - len(SHORT)
    pairs = dataset.pairs_frame(epochs=5)
    assert not set(pairs["target_id"]) & SHORT
    assert set(pairs["target_id"]) == set(manifest.ids) - SHORT
    for row in pairs.itertuples():
        assert len(set(row.reference_ids)) == 4 and row.target_id not in row.reference_ids
        assert not {(row.target_id, ref) for ref in row.reference_ids} & FORBIDDEN
    # with N=2 nobody is short, so nobody is refused
    assert PairsDataset(manifest, PairsConfig(n_references=2, shortfall="refuse")).refused == []
    sampler = ReferenceSampler(manifest, "identity", 4, "refuse")
    with pytest.raises(ReferenceShortfallError, match="c_0"):
        sampler.sample(manifest.row_of["c_0"], np.random.default_rng(0))


@pytest.fixture(scope="module")
def curriculum_dir(tmp_path_factory):
    """'aa_varied': 3 different images, source "synthetic"; 'zz_same': one image saved 3 times, source
    "danbooru". Manifest order and identity names both put aa_varied first."""
    rng = np.random.default_rng(3)
    same = colour_field(rng)
    identities = {"aa_varied": [colour_field(rng) for _ in range(3)], "zz_same": [same, same.copy(), same.copy()]}
    sources = {"aa_varied": "synthetic", "zz_same": "danbooru"}
    return write_dataset(tmp_path_factory.mktemp("curriculum"), identities,
                         extra={"source": lambda identity, k: sources[identity]})


def identity_order(manifest, rows):
    return list(dict.fromkeys(manifest.identities[r] for r in rows))


def test_curriculum_phash_puts_the_consistent_identity_first(curriculum_dir):
    manifest = load_manifest(curriculum_dir)
    rows = list(range(len(manifest)))
    assert identity_order(manifest, rows) == ["aa_varied", "zz_same"]
    ordered = curriculum_order(manifest, rows, by="phash")
    assert identity_order(manifest, ordered) == ["zz_same", "aa_varied"]
    assert sorted(ordered) == rows
    # same mode: the identical images are valid targets; the dataset's items follow the curriculum
    dataset = PairsDataset(manifest, PairsConfig(mode="same", curriculum="phash"))
    assert [manifest.identities[r] for r in dataset.target_rows] == ["zz_same"] * 3 + ["aa_varied"] * 3
    assert dataset[0].identity == "zz_same"
    assert identity_order(manifest, PairsDataset(manifest, PairsConfig(mode="same")).target_rows) == [
        "aa_varied", "zz_same"]


def test_curriculum_source_follows_source_order(curriculum_dir):
    manifest = load_manifest(curriculum_dir)
    rows = list(range(len(manifest)))
    first_real = curriculum_order(manifest, rows, by="source", source_order=("danbooru", "synthetic"))
    assert identity_order(manifest, first_real) == ["zz_same", "aa_varied"]
    first_synthetic = curriculum_order(manifest, rows, by="source", source_order=("synthetic", "danbooru"))
    assert identity_order(manifest, first_synthetic) == ["aa_varied", "zz_same"]
    # a source missing from source_order ranks after the listed ones
    assert identity_order(manifest, curriculum_order(manifest, rows, by="source", source_order=("danbooru",))) == [
        "zz_same", "aa_varied"]
    dataset = PairsDataset(manifest, PairsConfig(mode="same", curriculum="source",
                                                 source_order=("danbooru", "synthetic")))
    assert identity_order(manifest, dataset.target_rows) == ["zz_same", "aa_varied"]
    with pytest.raises(SameIdError, match="source_order"):
        curriculum_order(manifest, rows, by="source")
    with pytest.raises(SameIdError, match="origin"):
        curriculum_order(manifest, rows, by="source", source_column="origin", source_order=("danbooru",))


def test_curriculum_embedding_orders_by_spread(curriculum_dir):
    manifest = load_manifest(curriculum_dir)
    rows = list(range(len(manifest)))
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)

    def embeddings(tight: str) -> dict:
        vectors = {}
        for r in rows:
            spread = 0.01 if manifest.identities[r] == tight else 2.0
            vectors[manifest.ids[r]] = centre + spread * rng.normal(size=16)
        return vectors

    tight_zz, tight_aa = embeddings("zz_same"), embeddings("aa_varied")
    assert identity_order(manifest, curriculum_order(manifest, rows, by="embedding", embeddings=tight_zz)) == [
        "zz_same", "aa_varied"]
    assert identity_order(manifest, curriculum_order(manifest, rows, by="embedding", embeddings=tight_aa)) == [
        "aa_varied", "zz_same"]
    dataset = PairsDataset(manifest, PairsConfig(mode="same", curriculum="embedding"), embeddings=tight_zz)
    assert identity_order(manifest, dataset.target_rows) == ["zz_same", "aa_varied"]
    with pytest.raises(SameIdError, match="embeddings"):
        curriculum_order(manifest, rows, by="embedding")


def test_unknown_curriculum_is_an_error(curriculum_dir):
    manifest = load_manifest(curriculum_dir)
    with pytest.raises(SameIdError, match="unknown curriculum 'hardest'"):
        curriculum_order(manifest, [0, 1], by="hardest")
    with pytest.raises(SameIdError, match="unknown curriculum"):
        PairsDataset(manifest, PairsConfig(mode="same", curriculum="hardest"))


def drops(dataset: PairsDataset, epoch: int) -> list[bool]:
    return [dataset.plan(i, epoch).caption_dropped for i in range(len(dataset))]


def test_prompt_drop_probability(shortfall_manifest):
    manifest = shortfall_manifest
    never = PairsDataset(manifest, PairsConfig(prompt_drop=0.0))
    always = PairsDataset(manifest, PairsConfig(prompt_drop=1.0))
    assert not any(any(drops(never, e)) for e in range(30))
    assert all(all(drops(always, e)) for e in range(30))
    for index in (0, 5):
        kept, dropped = never[index], always[index]
        caption = manifest.captions[always.target_rows[index]]
        assert caption and kept.caption == caption and not kept.caption_dropped
        assert dropped.caption == "" and dropped.full_caption == caption and dropped.caption_dropped

    half = PairsDataset(manifest, PairsConfig(prompt_drop=0.5, seed=11))
    draws = [d for e in range(60) for d in drops(half, e)]  # 840 draws: 0.5 +- 0.017 (1 sd)
    assert 0.43 < np.mean(draws) < 0.57
    # deterministic given seed and epoch; a new epoch or seed draws anew
    again = PairsDataset(manifest, PairsConfig(prompt_drop=0.5, seed=11))
    assert drops(half, 3) == drops(again, 3)
    assert drops(half, 3) != drops(half, 4)
    assert drops(half, 3) != drops(PairsDataset(manifest, PairsConfig(prompt_drop=0.5, seed=12)), 3)
    half.set_epoch(4)
    example = half[2]
    assert example.caption_dropped == drops(half, 4)[2]
    assert example.caption == ("" if example.caption_dropped else example.full_caption)


def test_contact_sheet_shows_each_target_beside_its_cropped_references(shortfall_manifest, tmp_path):
    manifest = shortfall_manifest
    pairs = sample_pairs(manifest, PairsConfig(task="composition", n_references=4, seed=1))
    thumbnail, gap, label = 40, 4, 16
    out = contact_sheet(manifest, pairs, tmp_path / "sheet" / "pairs.png", examples=3, thumbnail=thumbnail)
    sheet = Image.open(out)
    assert sheet.format == "PNG"
    assert sheet.size == (5 * (thumbnail + gap) + gap, 3 * (thumbnail + label + gap) + gap)
    pixels = np.asarray(sheet.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50 and pixels.std() > 20

    def cell(row: int, column: int) -> np.ndarray:
        x, y = gap + column * (thumbnail + gap), gap + row * (thumbnail + label + gap)
        return pixels[y:y + thumbnail, x:x + thumbnail]

    def fitted(identifier: str, box=None) -> np.ndarray:
        image = load_image(manifest.image_paths[manifest.row_of[identifier]])[0]
        if box is not None and tuple(box) != (0, 0, image.width, image.height):
            image = image.crop(tuple(int(v) for v in box))
        return np.asarray(ImageOps.pad(image, (thumbnail, thumbnail), color=(255, 255, 255)))

    for r, pair in enumerate(pairs.head(3).itertuples()):
        assert np.array_equal(cell(r, 0), fitted(pair.target_id))
        for c, (reference, box) in enumerate(zip(pair.reference_ids, pair.crop_boxes), start=1):
            assert np.array_equal(cell(r, c), fitted(reference, box))
    # one row per example
    two = Image.open(contact_sheet(manifest, pairs, tmp_path / "two.png", examples=2, thumbnail=thumbnail))
    assert two.size == (sheet.width, 2 * (thumbnail + label + gap) + gap)


def test_embedding_audit_reports_a_planted_similar_reference(shortfall_manifest):
    manifest = shortfall_manifest
    pairs = sample_pairs(manifest, PairsConfig(n_references=4), epochs=3)
    rng = np.random.default_rng(5)
    embeddings = {identifier: rng.normal(size=128) for identifier in manifest.ids}  # cosines near 0
    clean = audit_pairs(manifest, pairs, n_references=4, embeddings=embeddings)
    assert clean.embeddings_checked and clean.leaking_pairs == 0 and len(clean.leaks) == 0

    target, reference = pairs.iloc[0]["target_id"], pairs.iloc[0]["reference_ids"][0]
    planted = dict(embeddings)
    planted[reference] = embeddings[target] + 0.05 * rng.normal(size=128)  # cosine about 0.999
    report = audit_pairs(manifest, pairs, n_references=4, embeddings=planted, similarity_threshold=0.95)
    expected = {(t, ref) for t, refs in zip(pairs["target_id"], pairs["reference_ids"]) for ref in refs
                if {t, ref} == {target, reference}}
    assert set(zip(report.leaks["target_id"], report.leaks["reference_id"])) == expected
    assert len(report.leaks) == sum(1 for t, refs in zip(pairs["target_id"], pairs["reference_ids"])
                                    for ref in refs if {t, ref} == {target, reference})
    assert all(reasons == [EMBEDDING] for reasons in report.leaks["reasons"])
    assert (report.leaks["similarity"] >= 0.95).all()
    assert report.summary()["leak_reasons"] == {EMBEDDING: len(report.leaks)}
    # a threshold above the planted similarity finds nothing
    assert audit_pairs(manifest, pairs, embeddings=planted, similarity_threshold=0.9999).leaking_pairs == 0


def test_same_mode_audit_reports_every_reference_of_every_pair(shortfall_manifest):
    manifest = shortfall_manifest
    pairs = sample_pairs(manifest, PairsConfig(mode="same", n_references=3, task="composition"), epochs=2)
    assert len(pairs) == 2 * len(manifest)
    report = audit_pairs(manifest, pairs)
    assert report.leaking_pairs == len(pairs)
    assert len(report.leaks) == report.references == 3 * len(pairs)
    assert all(SELF in reasons for reasons in report.leaks["reasons"])
    assert report.summary()["leak_reasons"][SELF] == 3 * len(pairs)


def test_multitask_draws_both_tasks_per_example(shortfall_manifest):
    dataset = PairsDataset(shortfall_manifest, PairsConfig(task="multitask", seed=2))
    pairs = dataset.pairs_frame(epochs=30)
    tasks = Counter(pairs["task"])
    assert set(tasks) == {"reconstruction", "composition"}
    assert 0.4 < tasks["reconstruction"] / len(pairs) < 0.6  # 420 draws: 0.5 +- 0.024 (1 sd)
    for row in pairs.itertuples():
        if row.task == "reconstruction":
            assert list(row.requested_concepts) == ["figure"] * 4 and list(row.concepts) == ["figure"] * 4
        else:
            assert set(row.requested_concepts) <= {"face", "clothes"}
            assert list(row.concepts) == list(row.requested_concepts)  # the head box allows both crops
    requested = Counter(c for row in pairs[pairs["task"] == "composition"].itertuples()
                        for c in row.requested_concepts)
    assert requested["face"] > 0 and requested["clothes"] > 0
    # an epoch's examples are not all one task, and the example says which task it drew
    assert pairs[pairs["epoch"] == 0]["task"].nunique() == 2
    for index in range(4):
        example = dataset[index]
        assert example.task == dataset.plan(index).task
        assert example.reference_concepts == list(pairs.iloc[index]["concepts"])
