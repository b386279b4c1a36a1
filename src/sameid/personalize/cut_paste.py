"""Cut-and-Paste positives: the instance cut out of a real image and pasted onto another background.

Personalized Representation from Personalized Generation (arXiv 2412.16156, generator comparison) uses Cut-and-Paste as a generator
of high fidelity (the pixels are the instance's own) and low diversity (no new pose or viewpoint): the instance is
segmented, then pasted with a random scale, position, flip and rotation onto new backgrounds. Here the mask is the
given one (a dataset's ``mask`` column, ``--masks``) or comes from one of the project's segmenters
(``border-colors`` for drawings on plain backgrounds, ``grabcut``, ``mediapipe-selfie`` for people); backgrounds
are images from a folder (random crops) or drawn procedurally (plain, gradient, stripes, blobs). A mild colour
jitter (brightness, contrast, saturation) touches the pasted instance only. The cut-out is scaled so that it always
fits: nothing is pasted outside the canvas, and the pasted mask of each image is saved beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from ..atomic import write_atomic
from ..errors import ImageError, SameIdError
from ..images import load_image, load_mask, save_mask
from ..verbosity import show_progress
from .instance import Instance, list_images
from .synthetic import Generator, SyntheticImage, image_seed


def _relative(path: Path, out: Path) -> str:
    return str(path.resolve().relative_to(out.resolve()))


def procedural_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random background of ``size`` (w, h): plain, a gradient, stripes or soft blobs."""
    width, height = size
    kind = int(rng.integers(4))
    first, second = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    if kind == 0:
        return Image.new("RGB", size, first)
    if kind == 1:
        t = np.linspace(0.0, 1.0, height)[:, None, None] if rng.random() < 0.5 else \
            np.linspace(0.0, 1.0, width)[None, :, None]
        array = (1 - t) * np.array(first) + t * np.array(second)
        return Image.fromarray(np.broadcast_to(array, (height, width, 3)).astype(np.uint8))
    image = Image.new("RGB", size, first)
    draw = ImageDraw.Draw(image)
    if kind == 2:
        step = int(rng.integers(8, 40))
        for offset in range(-height, width + height, 2 * step):
            draw.polygon([(offset, 0), (offset + step, 0), (offset + step + height, height), (offset + height, height)],
                         fill=second)
        return image
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.05, 0.3) * max(width, height)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.02 * max(width, height))))


class CutPasteGenerator(Generator):
    """``cut-paste[:<backgrounds folder>]``: see the module doc.

    ``scale``: the pasted instance's height as a fraction of the canvas height (a range); ``rotation``: the
    largest rotation in degrees; ``jitter``: the largest relative change of brightness, contrast and saturation;
    ``segmenter``: the segmenter spec used where no mask is given; ``size``: the canvas (w, h), default the real
    image's size.
    """

    name = "cut-paste"

    def __init__(self, backgrounds: str = "", *, segmenter: str = "border-colors",
                 scale: tuple[float, float] = (0.5, 0.95), rotation: float = 15.0, jitter: float = 0.1,
                 size: tuple[int, int] | None = None):
        self.backgrounds = list_images(backgrounds, "cut-paste backgrounds") if backgrounds else []
        self.segmenter = segmenter
        if not 0 < scale[0] <= scale[1] <= 1:
            raise SameIdError(f"cut-paste scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotation = float(rotation)
        self.jitter = float(jitter)
        self.size = size

    def cutout(self, path: str, mask_path: str | None) -> tuple[Image.Image, Image.Image]:
        """(RGB crop, L mask crop) of the instance in one real image, cropped to the mask's box."""
        try:
            image, _ = load_image(path)
            mask = load_mask(mask_path, image.size) if mask_path else None
        except ImageError as error:
            raise SameIdError(f"cut-paste: {error}") from error
        if mask is None:
            from ..backends.registry import create_backend

            mask = create_backend("segmenter", self.segmenter).segment(image)
        if not mask.any():
            raise SameIdError(f"cut-paste: no instance found in {path} by segmenter {self.segmenter!r}: give its "
                              "mask (--masks DIR with <stem>.png) or choose another --segmenter")
        rows, cols = np.nonzero(mask)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        return image.crop(box), Image.fromarray(mask.astype(np.uint8) * 255, "L").crop(box)

    def background(self, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
        if not self.backgrounds:
            return procedural_background(rng, size)
        path = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        try:
            image, _ = load_image(path)
        except ImageError as error:
            raise SameIdError(f"cut-paste background: {error}") from error
        # a random crop of the background's aspect ratio, then resized to the canvas
        width, height = size
        fraction = rng.uniform(0.6, 1.0)
        crop_w = min(image.width, max(1, round(fraction * min(image.width, image.height * width / height))))
        crop_h = min(image.height, max(1, round(crop_w * height / width)))
        left = int(rng.integers(0, image.width - crop_w + 1))
        top = int(rng.integers(0, image.height - crop_h + 1))
        return image.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)

    def paste(self, rng: np.random.Generator, cut: Image.Image, cut_mask: Image.Image, size: tuple[int, int]
              ) -> tuple[Image.Image, np.ndarray, list[int]]:
        """One composite: (image, pasted bool mask, box x0 y0 x1 y1), all inside the ``size`` canvas."""
        width, height = size
        canvas = self.background(rng, size)
        if rng.random() < 0.5:
            cut, cut_mask = cut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), cut_mask.transpose(
                Image.Transpose.FLIP_LEFT_RIGHT)
        angle = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation else 0.0
        if angle:
            cut = cut.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
            cut_mask = cut_mask.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
            box = cut_mask.getbbox()
            if box:
                cut, cut_mask = cut.crop(box), cut_mask.crop(box)
        factor = float(rng.uniform(*self.scale)) * height / cut.height
        factor = min(factor, width / cut.width, height / cut.height)  # always fits the canvas
        new_size = (max(1, min(width, int(cut.width * factor))), max(1, min(height, int(cut.height * factor))))
        cut = cut.resize(new_size, Image.Resampling.BICUBIC)
        cut_mask = cut_mask.resize(new_size, Image.Resampling.NEAREST)
        if self.jitter:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                cut = enhancer(cut).enhance(float(rng.uniform(1 - self.jitter, 1 + self.jitter)))
        left = int(rng.integers(0, width - new_size[0] + 1))
        top = int(rng.integers(0, height - new_size[1] + 1))
        canvas.paste(cut, (left, top), cut_mask)
        pasted = np.zeros((height, width), dtype=bool)
        pasted[top:top + new_size[1], left:left + new_size[0]] = np.asarray(cut_mask) > 127
        return canvas, pasted, [left, top, left + new_size[0], top + new_size[1]]

    def generate(self, instance: Instance, folder: Path, count: int, seed: int, *, out: Path,
                 progress: bool = False) -> list[SyntheticImage]:
        from tqdm.auto import tqdm

        cutouts = [self.cutout(path, mask) for path, mask in zip(instance.real, instance.masks)]
        sizes = [load_image(path)[0].size if self.size is None else tuple(self.size) for path in instance.real]
        records = []
        for index in tqdm(range(count), desc=f"{self.name} {instance.name}", disable=not (progress and show_progress()),
                          leave=False):
            source = index % len(instance.real)
            rng = np.random.default_rng(image_seed(seed, self.spec or self.name, index))
            image_path = folder / f"{index:04d}.png"
            mask_path = folder / "masks" / f"{index:04d}.png"
            image, pasted, box = self.paste(rng, *cutouts[source], sizes[source])
            if not (image_path.is_file() and mask_path.is_file()):
                save_mask(pasted, mask_path)
                write_atomic(image_path, lambda tmp, image=image: image.save(tmp, format="PNG"), suffix=".png")
            records.append(SyntheticImage(
                image=_relative(image_path, out), generator=self.spec or self.name, role=self.role,
                sources=[instance.real[source]], seed=image_seed(seed, self.spec or self.name, index), box=box,
                mask=_relative(mask_path, out)))
        return records
