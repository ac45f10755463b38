"""The photos suite's tasks: label attributes (what was done to a photo patch) and input domains.

An *attribute* is a family of image operations with one class per strength (blur: sharp /
slightly blurred / very blurred, ...). Its class names + prompt templates make the zero-shot
head, and pretraining captions patches with exactly these prompts. A *domain* is a fixed
transform applied after the label operation (inversion, an edge filter, ...); no caption names
it. A *task* pairs one attribute with one domain, like the digits suite's attribute x domain.
Every operation works on a 32x32 RGB PIL patch and keeps its size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

Op = Callable[[Image.Image, np.random.Generator], Image.Image]


def _blur(radius: float) -> Op:
    return lambda im, rng: im if radius == 0 else im.filter(ImageFilter.GaussianBlur(radius))


def _gaussian_noise(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    px = np.asarray(im, dtype=np.float64) + rng.normal(0.0, 22.0, (*im.size[::-1], 1))
    return Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8))


def _salt_pepper(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    px = np.array(im)
    hit = rng.random(px.shape[:2])  # [H, W]
    px[hit < 0.03] = 0
    px[hit > 0.97] = 255
    return Image.fromarray(px)


def _tile(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Four half-size copies of the patch, 2x2."""
    small = im.resize((im.width // 2, im.height // 2), Image.Resampling.BOX)
    out = Image.new("RGB", im.size)
    for x in (0, im.width // 2):
        for y in (0, im.height // 2):
            out.paste(small, (x, y))
    return out


def _overlay(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Op:
    """An op from fn(pixels [H, W, 3] float 0..255, grid [2, H, W] (y, x) in -1..1) -> pixels."""

    def op(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        px = np.asarray(im, dtype=np.float64)
        grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in px.shape[:2]), indexing="ij"))
        return Image.fromarray(np.clip(np.rint(fn(px, grid)), 0, 255).astype(np.uint8))

    return op


def _light(axis: int, sign: float) -> Op:
    """Brightness ramps from x0.35 to x1.35 towards one side (axis 0: y, 1: x)."""
    return _overlay(lambda px, g: px * (0.85 + 0.5 * sign * g[axis])[..., None])


def _stripes(axis: int) -> Op:
    """Sinusoidal stripes of period 4 px, amplitude 45, varying along `axis` (0: horizontal)."""
    return _overlay(lambda px, g: px + 45 * np.sin(np.pi * 7.75 * g[axis])[..., None])


def _spot(cy: float, cx: float) -> Op:
    """A bright disc (radius ~4 px) centred in one quadrant."""
    return _overlay(lambda px, g: np.where(
        ((g[0] - cy) ** 2 + (g[1] - cx) ** 2 < 0.07)[..., None], 255.0, px))


def _vignette(sign: float) -> Op:
    """Corners darkened (sign -1) or brightened (+1) with the squared distance from the centre."""
    return _overlay(lambda px, g: px + sign * 110 * ((g[0] ** 2 + g[1] ** 2) / 2)[..., None])


def _cast(red: float) -> Op:
    """A colour cast: red channel +red, blue channel -red."""
    return _overlay(lambda px, g: px + np.array([red, 0.0, -red]))


def _keep(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im


@dataclass(frozen=True)
class Attribute:
    """A label set: ops[k] makes class k from a clean patch; exactly one op keeps it as it is."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    ops: tuple[Op, ...]

    def captions(self) -> list[tuple[str, int]]:
        """(caption, class) for every class x template."""
        return [(t.format(c), k) for k, c in enumerate(self.classnames) for t in self.templates]

    @property
    def neutral(self) -> int:
        """The class of an untouched patch."""
        return self.ops.index(_keep)


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute("blur", ("sharp", "slightly blurred", "very blurred"),
                  ("a {} photo.", "a photo that is {}."), (_keep, _blur(0.8), _blur(1.8))),
        Attribute("noise", ("clean", "grainy", "speckled"),
                  ("a {} photo.", "a photo that looks {}."), (_keep, _gaussian_noise, _salt_pepper)),
        Attribute("tiling", ("a single view", "a two by two tiling"),
                  ("a photo of {}.", "an image showing {}."), (_keep, _tile)),
        Attribute("light", ("evenly lit", "lit from the left", "lit from the right",
                            "lit from above", "lit from below"),
                  ("a photo {}.", "an image {}."),
                  (_keep, _light(1, -1), _light(1, 1), _light(0, -1), _light(0, 1))),
        Attribute("stripes", ("no stripes", "horizontal stripes", "vertical stripes"),
                  ("a photo with {}.", "an image with {}."), (_keep, _stripes(0), _stripes(1))),
        Attribute("spot", ("no spot", "a spot at the top left", "a spot at the top right",
                           "a spot at the bottom left", "a spot at the bottom right"),
                  ("a photo with {}.", "an image with {}."),
                  (_keep, _spot(-0.5, -0.5), _spot(-0.5, 0.5), _spot(0.5, -0.5), _spot(0.5, 0.5))),
        Attribute("vignette", ("even corners", "dark corners", "bright corners"),
                  ("a photo with {}.", "an image with {}."), (_keep, _vignette(-1), _vignette(1))),
        Attribute("cast", ("neutral colours", "a warm tint", "a cool tint"),
                  ("a photo with {}.", "an image with {}."), (_keep, _cast(45), _cast(-45))),
    )
}

# Applied after the label's operation. Several of them permute what the base model would say
# (hflip swaps left/right light, transpose swaps stripe directions, vflip swaps spot rows,
# invert swaps dark/bright corners, swap_rb swaps warm/cool), so zero-shot heads start wrong.
DOMAINS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "identity": lambda im: im,
    "edges": lambda im: im.filter(ImageFilter.FIND_EDGES),
    "solarize": lambda im: ImageOps.solarize(im, 128),
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "transpose": lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "invert": ImageChops.invert,
    "swap_rb": lambda im: Image.merge("RGB", im.split()[::-1]),
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

    def render(self, patch: Image.Image, label: int, rng: np.random.Generator) -> Image.Image:
        """A clean 32x32 RGB patch -> class `label`'s operation, then this task's domain."""
        return DOMAINS[self.domain](self.attr.ops[label](patch, rng))


BENCH_TASKS: tuple[TaskDef, ...] = (
    TaskDef("blur_edges", "blur", "edges"),
    TaskDef("noise_solarize", "noise", "solarize"),
    TaskDef("tiling_rot90", "tiling", "rot90"),
    TaskDef("light_hflip", "light", "hflip"),
    TaskDef("stripes_transpose", "stripes", "transpose"),
    TaskDef("spot_vflip", "spot", "vflip"),
    TaskDef("vignette_invert", "vignette", "invert"),
    TaskDef("cast_swap_rb", "cast", "swap_rb"),
)

TEST_TASKS: tuple[TaskDef, ...] = (
    TaskDef("blur_edges", "blur", "edges"),
    TaskDef("stripes_transpose", "stripes", "transpose"),
    TaskDef("vignette_invert", "vignette", "invert"),
)
