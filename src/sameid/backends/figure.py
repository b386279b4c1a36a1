"""Offline figure backends for drawings: two figure segmenters and a head box from the mask's geometry.

RetriBooru annotates every image with a figure mask (IS-Net) and a head box (YOLOv5), both trained on Danbooru
(RetriBooru, arXiv 2312.02521, appendix A.1 "Vision annotations"). Those weights are not shipped with
sameid; these backends need none and work on single figures drawn on a plain, light or softly patterned
background (Danbooru 2019 Figures crops, the bundled sample):

- :class:`BorderColorSegmenter` (``border-colors``, the build's default for drawings): the figure is what differs
  in colour from the image border and is not reached from the border through background (a flood fill), at a
  working size of 512 px; about 13 CPU-ms an image (``benchmarks/bench_masks.py``).
- :class:`GrabCutSegmenter` (``grabcut``, the careful option): OpenCV GrabCut initialised with the image border
  as background (a band a few pixels wide is certain background, the rectangle inside it probable figure, except
  pixels of the border's own colours, which start as probable background), a few iterations, then the largest
  connected figure component.
- :class:`MaskTopHeadDetector` (``mask-top``): a geometric heuristic for a single standing figure, the head is
  the top of the figure mask down to where the silhouette narrows at the neck (or, when it never narrows, the
  top sixth of the figure). A learned anime head detector can be plugged in instead through the ``transformers``
  head detector (``--head-detector transformers:<model id or path>``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import cv2
import numpy as np
from PIL import Image

from .base import Detection, HeadDetector, Segmenter
from .colors import rgb_to_lab
from .registry import create_backend


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (all False when the mask is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def fill_small_holes(mask: np.ndarray, max_fraction: float) -> np.ndarray:
    """Fill holes (background not connected to the image border) smaller than ``max_fraction`` of the mask."""
    background = ~mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background.astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    limit = max_fraction * float(mask.sum())
    small = [index for index in range(1, count)
             if index not in border and stats[index, cv2.CC_STAT_AREA] <= limit]
    if not small:
        return mask
    return mask | np.isin(labels, small)


class GrabCutSegmenter(Segmenter):
    """GrabCut (Rother et al., 2004) with the image border as background; bool (H, W), True on the figure.

    The border band (``border_fraction`` of the shorter side) is certain background and the rectangle inside it
    probable figure, as in GrabCut's rectangle initialisation; inside the rectangle, pixels within
    ``background_delta_e`` (CIELAB) of a colour seen on the border start as probable background. That prior
    matters on patterned and gradient backgrounds, where the rectangle alone lets GrabCut keep background as
    figure (on the bundled sample: mean mask IoU 0.80 with the rectangle alone, 0.98 with the prior). The figure
    must not touch the image border, and a figure coloured like its background is lost with it.

    ``iterations`` (the spec argument, ``grabcut:5``) is the number of GrabCut iterations. Images larger than
    ``max_side`` are segmented at that size and the mask is scaled back.
    """

    def __init__(self, iterations: int | str = 3, max_side: int = 384, border_fraction: float = 0.02,
                 background_delta_e: float = 8.0):
        self.iterations = int(iterations)
        if self.iterations < 1:
            raise ValueError(f"GrabCut needs at least one iteration, not {self.iterations}")
        self.max_side = int(max_side)
        self.border_fraction = float(border_fraction)
        self.background_delta_e = float(background_delta_e)
        # The builder asks the segmenter and then the head detector about the same image; keep a few results.
        self._recent: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def segment(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        key = hashlib.blake2b(image.tobytes(), digest_size=16, salt=f"{image.width}x{image.height}".encode()[:16]
                              ).digest()
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key].copy()
        mask = self._segment(image)
        self._recent[key] = mask
        if len(self._recent) > 8:
            self._recent.popitem(last=False)
        return mask.copy()

    def _segment(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        work = image if scale == 1.0 else image.resize(
            (max(8, round(width * scale)), max(8, round(height * scale))), Image.BILINEAR)
        rgb = np.asarray(work)
        h, w = rgb.shape[:2]
        margin = max(2, round(self.border_fraction * min(h, w)))
        if w <= 2 * margin + 2 or h <= 2 * margin + 2:
            return np.zeros((height, width), dtype=bool)
        border = np.ones((h, w), dtype=bool)
        border[margin:h - margin, margin:w - margin] = False
        labels = np.where(self._near_border_colours(rgb, border), cv2.GC_PR_BGD, cv2.GC_PR_FGD).astype(np.uint8)
        labels[border] = cv2.GC_BGD
        candidates = cv2.morphologyEx((labels == cv2.GC_PR_FGD).astype(np.uint8), cv2.MORPH_OPEN,
                                      np.ones((3, 3), np.uint8))
        rows, cols = np.nonzero(candidates)
        if rows.size == 0:
            return np.zeros((height, width), dtype=bool)  # nothing differs from the border: no figure
        # GrabCut's cost grows with the pixels it sees: run it on the candidates' box and some background around.
        pad = 3 * margin + 4
        top, bottom = max(0, rows.min() - pad), min(h, rows.max() + 1 + pad)
        left, right = max(0, cols.min() - pad), min(w, cols.max() + 1 + pad)
        window = labels[top:bottom, left:right].copy()
        window[[0, -1], :] = cv2.GC_BGD
        window[:, [0, -1]] = cv2.GC_BGD
        background_model = np.zeros((1, 65), dtype=np.float64)
        foreground_model = np.zeros((1, 65), dtype=np.float64)
        cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: fixed, so a run is reproducible
        try:
            cv2.grabCut(np.ascontiguousarray(cv2.cvtColor(rgb[top:bottom, left:right], cv2.COLOR_RGB2BGR)), window,
                        None, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return np.zeros((height, width), dtype=bool)  # e.g. too few distinct colours to fit the models
        labels[:] = cv2.GC_BGD
        labels[top:bottom, left:right] = window
        figure = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        # GrabCut leaves specks and pin holes along low-contrast edges; the figure is one blob.
        figure = cv2.morphologyEx(figure.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
        figure = fill_small_holes(largest_component(figure), max_fraction=0.003)
        if scale != 1.0:
            figure = cv2.resize(figure.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        return figure

    def _near_border_colours(self, rgb: np.ndarray, border: np.ndarray) -> np.ndarray:
        """Pixels within ``background_delta_e`` of some colour of the border band."""
        # Distances are computed once per distinct colour (a drawing has few, a JPEG some thousands).
        packed = rgb.reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
        colours, inverse = np.unique(packed, return_inverse=True)
        lab = rgb_to_lab(np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8))
        # Border colours rounded to 2 CIELAB units: a gradient or a pattern has a few hundred, not thousands.
        border_colours = np.unique(inverse.reshape(-1)[border.reshape(-1)])
        palette = np.unique(np.round(lab[border_colours] / 2.0), axis=0) * 2.0
        nearest = np.full(len(lab), np.inf, dtype=np.float32)
        for start in range(0, len(palette), 64):
            chunk = palette[start:start + 64]
            distances = ((lab[:, None, :] - chunk[None, :, :]) ** 2).sum(axis=2).min(axis=1)
            np.minimum(nearest, distances, out=nearest)
        return (nearest < self.background_delta_e ** 2)[inverse.reshape(-1)].reshape(border.shape)


class BorderColorSegmenter(Segmenter):
    """The fast figure segmenter for drawings: whatever differs from the border's colours and is not reached
    from the border through background; bool (H, W), True on the figure.

    At a working size (long side ``max_side``), every pixel's CIELAB distance to the background is the smaller
    of its distance to a palette of the border band's colours (k-means, ``clusters`` colours) and to a quadratic
    colour surface fitted to the border band (a gradient). Pixels more than ``threshold`` units away are figure
    candidates; the background is then what is connected to the image border through non-candidates (a flood
    fill), so regions inside the figure's outline keep the figure even when their colour is the background's (a
    white shirt on white). The largest figure component is kept with any other of at least ``keep_fraction`` of
    its area, and the mask is scaled back with smooth edges. Limits: the figure must not touch the image border
    (its colours would count as background), a gap in the outline where figure and background colours meet lets
    the background in, and holes of background enclosed by the figure (between an arm and the body) count as
    figure.

    ``max_side`` is the spec argument (``border-colors:512``).
    """

    def __init__(self, max_side: int | str = 512, threshold: float = 10.0, border_fraction: float = 0.01,
                 clusters: int = 8, keep_fraction: float = 0.1):
        self.max_side = int(max_side)
        if self.max_side < 32:
            raise ValueError(f"the working size must be at least 32 pixels, not {self.max_side}")
        self.threshold = float(threshold)
        self.border_fraction = float(border_fraction)
        self.clusters = int(clusters)
        self.keep_fraction = float(keep_fraction)

    def segment(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"))
        height, width = rgb.shape[:2]
        empty = np.zeros((height, width), dtype=bool)
        scale = min(1.0, self.max_side / max(width, height))
        if scale < 1.0:
            size = (max(8, round(width * scale)), max(8, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        h, w = rgb.shape[:2]
        margin = max(2, round(self.border_fraction * min(h, w)))
        if w <= 2 * margin + 2 or h <= 2 * margin + 2:
            return empty
        lab = cv2.cvtColor(rgb.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
        border = np.ones((h, w), dtype=bool)
        border[margin:h - margin, margin:w - margin] = False
        distance = self._background_distance(lab, border)
        candidates = (distance > self.threshold).astype(np.uint8)
        if not candidates.any():
            return empty
        candidates = cv2.morphologyEx(candidates, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        # The background is what the border reaches without crossing a candidate.
        count, labels = cv2.connectedComponents(1 - candidates, connectivity=4)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        lookup = np.ones(count, dtype=np.uint8)
        lookup[edge[edge > 0]] = 0
        figure = lookup[labels]
        figure = self._main_components(figure)
        if figure is None:
            return empty
        if scale < 1.0:
            smooth = cv2.resize(figure * np.uint8(255), (width, height), interpolation=cv2.INTER_LINEAR)
            return smooth > 127
        return figure > 0

    def _main_components(self, figure: np.ndarray) -> np.ndarray | None:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(figure, connectivity=8)
        if count <= 1:
            return None
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.zeros(count, dtype=np.uint8)
        keep[1:][areas >= self.keep_fraction * areas.max()] = 1
        return keep[labels]

    def _background_distance(self, lab: np.ndarray, border: np.ndarray) -> np.ndarray:
        """Per pixel, the CIELAB distance to the nearer of the border palette and the border colour surface."""
        h, w = border.shape
        samples = np.ascontiguousarray(lab[border])
        # The palette: k-means of the border colours; a cluster of very few border pixels is dropped (noise, or
        # a figure that touches the border).
        k = min(self.clusters, len(samples))
        cv2.setRNGSeed(0)
        _, assigned, centres = cv2.kmeans(samples, k, None, (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER,
                                                                 10, 0.5), 1, cv2.KMEANS_PP_CENTERS)
        shares = np.bincount(assigned.ravel(), minlength=k) / len(samples)
        centres = centres[shares >= 0.02]
        planes = [np.ascontiguousarray(lab[..., channel]) for channel in range(3)]

        def squared(reference) -> np.ndarray:  # per-plane arithmetic: several times faster than a sum over axis 2
            total = np.square(planes[0] - reference[0])
            total += np.square(planes[1] - reference[1])
            total += np.square(planes[2] - reference[2])
            return total

        best = np.full((h, w), np.inf, dtype=np.float32)
        for centre in centres:
            np.minimum(best, squared(centre), out=best)
        # The surface: each channel a quadratic in (x, y), least squares on the border band.
        ys, xs = np.nonzero(border)
        x, y = xs / np.float32(w), ys / np.float32(h)
        design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
        # Normal equations of a 6-term fit: far cheaper than lstsq's SVD, and the ridge keeps them solvable.
        gram = design.T @ design + np.eye(6, dtype=np.float32) * np.float32(1e-3 * len(design))
        coefficients = np.linalg.solve(gram.astype(np.float64), (design.T @ samples).astype(np.float64))
        gx = (np.arange(w, dtype=np.float32) / w)[None, :]
        gy = (np.arange(h, dtype=np.float32) / h)[:, None]
        c = coefficients.astype(np.float32)
        surface = [c[0, i] + c[1, i] * gx + c[2, i] * gy + c[3, i] * gx * gx + c[4, i] * gx * gy + c[5, i] * gy * gy
                   for i in range(3)]
        np.minimum(best, squared(surface), out=best)
        return np.sqrt(best)


class MaskTopHeadDetector(HeadDetector):
    """Head box from the geometry of the figure mask: a heuristic for one standing figure, head up.

    Going down the rows of the figure's silhouette, the head ends where the width falls below ``neck_ratio`` of
    the widest head row seen so far and then stops shrinking (the neck), searched within the top
    ``search_fraction`` of the figure. When the
    silhouette never narrows (hair over the shoulders, a hood) the head is the top ``1 / fallback_heads`` of the
    figure, with a lower score. The box spans the columns of the mask in those rows.

    :meth:`detect` segments the image itself, with the segmenter named by the spec argument (``mask-top`` uses
    ``grabcut``, ``mask-top:mediapipe-selfie`` another); :meth:`detect_in_mask` takes a mask already made.
    For anything but single standing figures, use a learned head detector (``transformers:<model>``).
    """

    def __init__(self, segmenter: str = "grabcut", neck_ratio: float = 0.62, search_fraction: float = 0.4,
                 fallback_heads: float = 6.0):
        self.segmenter_spec = segmenter
        self.neck_ratio = float(neck_ratio)
        self.search_fraction = float(search_fraction)
        self.fallback_heads = float(fallback_heads)

    def detect(self, image: Image.Image) -> list[Detection]:
        mask = create_backend("segmenter", self.segmenter_spec).segment(image)
        return self.detect_in_mask(mask)

    def detect_in_mask(self, mask: np.ndarray) -> list[Detection]:
        """The head box of the figure in a bool (H, W) mask, or [] when the mask is empty."""
        mask = largest_component(np.asarray(mask, dtype=bool))
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return []
        top, bottom = int(rows[0]), int(rows[-1]) + 1
        figure_height = bottom - top
        widths = mask[top:bottom].sum(axis=1).astype(np.float64)
        if figure_height >= 5:
            widths = np.convolve(widths, np.ones(3) / 3.0, mode="same")
        min_head = max(2, int(round(0.05 * figure_height)))
        search_end = max(min_head + 1, int(round(self.search_fraction * figure_height)))
        neck, widest = None, 0.0
        for offset in range(min(search_end, figure_height)):
            widest = max(widest, widths[offset])
            if offset >= min_head and widths[offset] < self.neck_ratio * widest:
                neck = offset
                break
        if neck is not None:
            # The silhouette may narrow before the chin (a chin under wide hair); the neck is where it stops.
            while neck + 1 < figure_height and widths[neck + 1] < widths[neck] - 0.5:
                neck += 1
        if neck is None:
            head_bottom, score = top + max(1, int(round(figure_height / self.fallback_heads))), 0.3
        else:
            head_bottom, score = top + neck, 0.8
        columns = np.flatnonzero(mask[top:head_bottom].any(axis=0))
        box = (float(columns[0]), float(top), float(columns[-1] + 1), float(head_bottom))
        return [Detection(box=box, score=score)]
