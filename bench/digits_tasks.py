"""The digits tasks: label attributes (with their prompts) and input domains.

An *attribute* maps a digit 0-9 to a class (identity, parity, >=5, mod 3, ...) and carries the
class names + prompt templates of its zero-shot head; the pretraining captions are exactly these
prompts, so zero-shot heads mean something. A *task* pairs one attribute with one input domain
(a deterministic PIL transform of the 16x16 grayscale digit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

SIDE = 16  # rendered image side (digits are 8x8, upsampled bicubically)

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Attribute:
    """digit -> class index; the classes' names and prompt templates."""

    name: str
    classes: tuple[int, ...]  # classes[d] = class of digit d
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def captions(self) -> list[tuple[str, int]]:
        """(caption, class) for every class x template."""
        return [(t.format(c), k) for k, c in enumerate(self.classnames) for t in self.templates]


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute("digit", tuple(range(10)), NAMES, ("a photo of the number {}.", "the digit {}.")),
        Attribute(
            "parity", tuple(d % 2 for d in range(10)), ("even", "odd"),
            ("an {} number.", "a photo of an {} number."),
        ),
        Attribute(
            "size", tuple(int(d >= 5) for d in range(10)), ("small", "large"),
            ("a {} number.", "a photo of a {} number."),
        ),
        Attribute(
            "mod3", tuple(d % 3 for d in range(10)),
            ("divisible by three", "one more than a multiple of three",
             "two more than a multiple of three"),
            ("a number {}.", "a photo of a number {}."),
        ),
        Attribute(
            "prime", tuple(int(d in (2, 3, 5, 7)) for d in range(10)), ("not prime", "prime"),
            ("a {} number.", "a photo of a {} number."),
        ),
        Attribute(
            "loop", tuple(int(d in (0, 6, 8, 9)) for d in range(10)),
            ("without a loop", "with a loop"),
            ("a number {}.", "a digit drawn {}."),
        ),
        Attribute(
            "square", tuple(int(d in (0, 1, 4, 9)) for d in range(10)),
            ("not a perfect square", "a perfect square"),
            ("a number that is {}.", "a photo of a number that is {}."),
        ),
        Attribute(
            "curve", tuple(int(d in (0, 2, 3, 5, 6, 8, 9)) for d in range(10)),
            ("made of straight strokes", "with curved strokes"),
            ("a number {}.", "a digit {}."),
        ),
    )
}


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    """Translate with black fill (no wrap-around)."""
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=0)


def _shrink(img: Image.Image) -> Image.Image:
    """Half size, in the top-left corner."""
    out = Image.new("L", img.size, 0)
    out.paste(img.resize((SIDE // 2, SIDE // 2), Image.Resampling.BILINEAR), (1, 1))
    return out


DOMAINS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "identity": lambda im: im,
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "invert": ImageChops.invert,
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
    "transpose": lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "shift": lambda im: _shift(im, 4, 3),
    "rot270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "shrink": _shrink,
}


@dataclass(frozen=True)
class TaskDef:
    """One task: a label attribute seen through an input domain."""

    name: str
    attribute: str
    domain: str

    @property
    def attr(self) -> Attribute:
        return ATTRIBUTES[self.attribute]

    def labels(self, digits: np.ndarray) -> np.ndarray:
        """digits [N] int -> class indices [N] int64."""
        return np.asarray(self.attr.classes, dtype=np.int64)[digits]

    def render(self, image8: np.ndarray) -> Image.Image:
        """One sklearn digit [8, 8] (values 0..16) -> its 16x16 'L' image in this domain."""
        return DOMAINS[self.domain](render_base(image8))


def render_base(image8: np.ndarray) -> Image.Image:
    """[8, 8] values 0..16 -> 16x16 grayscale PIL image (0..255), bicubic upsampling."""
    pixels = np.clip(np.rint(image8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


BENCH_TASKS: tuple[TaskDef, ...] = (
    TaskDef("digit_rot90", "digit", "rot90"),
    TaskDef("parity_invert", "parity", "invert"),
    TaskDef("size_blur", "size", "blur"),
    TaskDef("mod3_transpose", "mod3", "transpose"),
    TaskDef("prime_hflip", "prime", "hflip"),
    TaskDef("loop_vflip", "loop", "vflip"),
    TaskDef("square_shift", "square", "shift"),
    TaskDef("curve_shrink", "curve", "shrink"),
)

TEST_TASKS: tuple[TaskDef, ...] = (
    TaskDef("parity_invert", "parity", "invert"),
    TaskDef("size_vflip", "size", "vflip"),
    TaskDef("loop_rot90", "loop", "rot90"),
)
