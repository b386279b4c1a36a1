"""Offline figure backends (GrabCut, mask-top head box, pixel-colour VQA) on the generated sample.

The acceptance target: grouping the sample's good images by (character, artist, answer to "List top two colors of
the character's clothes"), as RetriBooru does (003, appendix A.1), recovers the true identities with pairwise
precision >= 0.99 and recall >= 0.9.
"""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from sameid.backends import Annotations, create_backend
from sameid.backends.colors import COLOR_NAMES, color_name, name_colors, normalize_color_word
from sameid.backends.figure import BorderColorSegmenter, GrabCutSegmenter, MaskTopHeadDetector
from sameid.backends.pixel_vqa import PixelColorVQA, is_clothing_color_question
from sameid.demo.sample import ARTISTS, GARMENT_RGB, make_sample
from sameid.errors import SameIdError
from sameid.images import load_image, load_mask

QUESTION = "List top two colors of the character's clothes"


def _good_rows(sample, characters=None) -> list[dict]:
    """Good rows (no plant) with their truth, image path and given annotations."""
    metadata = {str(row["id"]): row for row in map(json.loads, sample.metadata.read_text().splitlines())}
    truth = pd.read_csv(sample.ground_truth, dtype=str, keep_default_na=False)
    rows = []
    for entry in truth[truth["plant"] == ""].to_dict("records"):
        if characters is not None and entry["character"] not in characters:
            continue
        row = metadata[entry["id"]]
        path = sample.image_root / f"{row['md5']}.{row['file_ext']}"
        if not path.is_file():
            path = sample.image_root / f"{row['id']}.{row['file_ext']}"
        rows.append({**entry, "path": path, "head_box": row.get("head_box"), "mask": row.get("mask")})
    return rows


def _run_backends(rows, segmenter=None) -> pd.DataFrame:
    segmenter, detector, vqa = segmenter or GrabCutSegmenter(), MaskTopHeadDetector(), PixelColorVQA()
    results = []
    for row in rows:
        image, _ = load_image(row["path"])
        mask = segmenter.segment(image)
        box = detector.detect_in_mask(mask)[0].box
        answer = vqa.answer(image, QUESTION, Annotations(head_box=box, mask=mask))
        results.append({**row, "image": image, "found_mask": mask, "found_box": box, "answer": answer})
    return pd.DataFrame(results)


def _pairwise(results: pd.DataFrame) -> tuple[float, float]:
    def pairs(key):
        found = set()
        for _, members in results.groupby(key):
            found.update(itertools.combinations(sorted(members["id"]), 2))
        return found

    predicted = pairs(results["character"] + "|" + results["artist"] + "|" + results["answer"])
    actual = pairs("identity")
    true_positive = len(predicted & actual)
    return true_positive / max(1, len(predicted)), true_positive / len(actual)


def _design_answer(outfit: str) -> str:
    main, second = outfit.split("_")[:2]
    return f"{main} and {second}"


def _box_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def results(sample) -> pd.DataFrame:
    return _run_backends(_good_rows(sample))


@pytest.fixture(scope="module")
def fast_results(sample) -> pd.DataFrame:
    return _run_backends(_good_rows(sample), BorderColorSegmenter())


def test_grouping_with_the_fast_segmenter_recovers_the_identities(fast_results):
    precision, recall = _pairwise(fast_results)
    print(f"border-colors: pairwise precision {precision:.4f} recall {recall:.4f} over {len(fast_results)} images")
    assert precision >= 0.99
    assert recall >= 0.9
    assert (fast_results["answer"] == fast_results["outfit"].map(_design_answer)).mean() >= 0.97


def test_fast_masks_and_head_boxes_match_the_sample(sample, fast_results):
    annotated = fast_results[fast_results["mask"].notna()]
    ious = [mask_iou(load_mask(sample.image_root / row.mask), row.found_mask) for row in annotated.itertuples()]
    boxes = [_box_iou(row.found_box, row.head_box) for row in annotated.itertuples()]
    print(f"border-colors: mask IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}; head box IoU mean "
          f"{np.mean(boxes):.3f} min {np.min(boxes):.3f}")
    assert np.mean(ious) >= 0.9 and np.min(ious) >= 0.8
    assert np.mean(boxes) >= 0.75 and np.min(boxes) >= 0.4


def mask_iou(truth: np.ndarray, found: np.ndarray) -> float:
    return float((truth & found).sum() / (truth | found).sum())


def test_grouping_by_answer_recovers_the_identities(results):
    precision, recall = _pairwise(results)
    print(f"seed 0: pairwise precision {precision:.4f} recall {recall:.4f} over {len(results)} images")
    assert precision >= 0.99
    assert recall >= 0.9


# The characters whose outfits have the closest colour areas in the sample (pants under a long top, a sailor
# collar, the order-sensitive pair): other seeds re-draw them in other poses, places and backgrounds.
@pytest.mark.parametrize("seed", [1, 2])
def test_grouping_holds_for_other_seeds(seed, tmp_path):
    sample = make_sample(tmp_path / f"seed{seed}", seed=seed)
    characters = {"mio_(sample)", "haru_(sample)", "akane_(sample)", "kaito_(sample)"}
    results = _run_backends(_good_rows(sample, characters))
    precision, recall = _pairwise(results)
    print(f"seed {seed}: pairwise precision {precision:.4f} recall {recall:.4f} over {len(results)} images")
    assert precision >= 0.99
    assert recall >= 0.9


def test_order_sensitive_outfits_get_opposite_answers(results):
    answers = results.groupby("outfit")["answer"].agg(set)
    for outfit in answers.index:
        main, second = outfit.split("_")[:2]
        opposite = [other for other in answers.index if other.split("_")[:2] == [second, main]]
        for other in opposite:
            assert answers[outfit] == {f"{main} and {second}"}
            assert answers[other] == {f"{second} and {main}"}
    assert any(o.split("_")[:2][::-1] == p.split("_")[:2] for o in answers.index for p in answers.index)


def test_answers_name_the_drawn_colours_in_order_of_area(results):
    expected = results["outfit"].map(_design_answer)
    assert (results["answer"] == expected).mean() >= 0.97


def test_grabcut_masks_match_the_drawn_figures(sample, results):
    annotated = results[results["mask"].notna()]
    assert len(annotated) > 30
    ious = []
    for row in annotated.itertuples():
        truth = load_mask(sample.image_root / row.mask)
        ious.append((truth & row.found_mask).sum() / (truth | row.found_mask).sum())
    print(f"mask IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}")
    assert np.mean(ious) >= 0.9 and np.min(ious) >= 0.8


def test_mask_top_head_boxes_overlap_the_true_heads(results):
    annotated = results[results["head_box"].notna()]
    ious = [_box_iou(row.found_box, row.head_box) for row in annotated.itertuples()]
    print(f"head box IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}")
    assert np.mean(ious) >= 0.75 and np.min(ious) >= 0.4


def test_given_annotations_give_the_drawn_colours_even_with_a_short_head_box(sample, results):
    vqa = PixelColorVQA()
    annotated = results[results["mask"].notna()]
    for row in annotated.itertuples():
        mask = load_mask(sample.image_root / row.mask)
        x0, y0, x1, y1 = row.head_box
        expected = _design_answer(row.outfit)
        assert vqa.answer(row.image, QUESTION, Annotations(head_box=tuple(row.head_box), mask=mask)) == expected
        # A box ending above the chin: hair hanging below it and the chin's skin must not count as clothes.
        short = (x0, y0, x1, y0 + 0.75 * (y1 - y0))
        assert vqa.answer(row.image, QUESTION, Annotations(head_box=short, mask=mask)) == expected, row.id


def test_backends_without_annotations_segment_and_detect_themselves(results):
    row = results.iloc[0]
    detector = create_backend("head_detector", "mask-top")
    assert isinstance(detector, MaskTopHeadDetector)
    assert isinstance(create_backend("segmenter", "grabcut"), GrabCutSegmenter)
    vqa = create_backend("vqa", "pixel-colors")
    assert isinstance(vqa, PixelColorVQA)
    assert detector.detect(row["image"])[0].box == row["found_box"]
    assert vqa.answer(row["image"], QUESTION) == row["answer"]
    assert vqa.answer(row["image"], QUESTION, Annotations()) == row["answer"]


def test_only_clothing_colour_questions_are_answered(results):
    image = results.iloc[0]["image"]
    vqa = PixelColorVQA()
    for question in ("What are the two main colours of her outfit?", "list top two colors of the character's cloths",
                     "Which colors is the character wearing?"):
        assert is_clothing_color_question(question)
        assert vqa.answer(image, question) == results.iloc[0]["answer"]
    for question in ("What is the character holding?", "What color is her hair?", "Describe the clothes."):
        assert not is_clothing_color_question(question)
        with pytest.raises(SameIdError, match="transformers:"):
            vqa.answer(image, question)


def test_blank_or_empty_inputs_give_nothing_rather_than_errors():
    blank = Image.new("RGB", (64, 96), (240, 240, 240))
    assert not GrabCutSegmenter().segment(blank).any()
    assert not BorderColorSegmenter().segment(blank).any()
    assert MaskTopHeadDetector().detect(blank) == []
    assert MaskTopHeadDetector().detect_in_mask(np.zeros((50, 40), dtype=bool)) == []
    assert PixelColorVQA().answer(blank, QUESTION) == ""


def test_mask_top_finds_the_neck_or_falls_back_to_a_sixth_of_the_figure():
    figure = np.zeros((120, 80), dtype=bool)
    yy, xx = np.mgrid[0:120, 0:80]
    figure |= (xx - 40) ** 2 + (yy - 20) ** 2 <= 12**2  # head: rows 8..32
    figure[32:38, 36:45] = True  # neck
    figure[38:115, 22:59] = True  # body
    box, score = MaskTopHeadDetector().detect_in_mask(figure)[0].box, MaskTopHeadDetector().detect_in_mask(figure)[0].score
    assert box[0] == 28 and box[2] == 53 and box[1] == 8 and 30 <= box[3] <= 34
    block = np.zeros((120, 80), dtype=bool)
    block[10:100, 20:60] = True  # never narrows
    fallback = MaskTopHeadDetector().detect_in_mask(block)[0]
    assert fallback.box == (20.0, 10.0, 60.0, 25.0) and fallback.score < score


def test_sample_garment_colours_keep_their_name_when_shaded_brightened_or_blurred():
    for name, rgb in GARMENT_RGB.items():
        assert color_name(rgb) == name
        for artist in ARTISTS:
            shade = artist.shade if min(rgb) <= 200 else 1 - 0.5 * (1 - artist.shade)
            assert color_name(tuple(round(c * shade) for c in rgb)) == name, (name, artist.name)
        brighter = np.asarray(ImageEnhance.Brightness(Image.new("RGB", (1, 1), rgb)).enhance(1.05))[0, 0]
        assert color_name(tuple(brighter)) == name
    assert name_colors(np.zeros((0, 3), dtype=np.uint8)).shape == (0,)


def test_colour_vocabulary_and_synonyms():
    assert COLOR_NAMES[:3] == ("black", "white", "gray") and len(COLOR_NAMES) == 11
    cases = {"Grey": "gray", "light-blue": "blue", "navy": "blue", "navy blue": "blue", "violet": "purple",
             "reddish": "red", "off white": "white", "hot pink": "pink", "beige": "brown", "golden": "yellow",
             "teal": "green", "dark green": "green", "sky": None, "plaid": None, "": None}
    for word, expected in cases.items():
        assert normalize_color_word(word) == expected, word
    skin = np.array([[255, 226, 206]], dtype=np.uint8)
    pixels = np.array([[255, 226, 206], [244, 244, 240], [40, 80, 200]], dtype=np.uint8)
    named = name_colors(pixels, competing=skin)
    assert named[0] == -1 and COLOR_NAMES[named[1]] == "white" and COLOR_NAMES[named[2]] == "blue"
