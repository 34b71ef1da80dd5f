"""Procedural scenes described by text: the data set of the embedded text-to-image model.

A scene is a background (plain, striped or checkered) and one to three groups of objects ("two small red
circles"). Objects sit in the cells of a 3x3 grid (with a little jitter), so a scene has an exact structured
label: what is in each cell, at which size, on which background. The caption says what a prompt would say;
the grammar is

    scene    := group ("and" group)* "on a" [PATTERN] COLOUR "background"
    group    := ("a" | "an") [SIZE] COLOUR SHAPE [POSITION]       (a single object)
              | ("two" | "three") [SIZE] COLOUR SHAPES            (a group, anywhere)
    POSITION := "at the top left" | "at the top" | "on the left" | "in the center" | ...

so prompts differ in difficulty: "a big red circle on a blue background" is easy, "two small white
crosses and a purple triangle at the bottom right and three black squares on a checkered yellow background"
is not. Patterns are fine texture at a random phase: a diffusion model settles such detail late in
sampling, so a patterned prompt needs more denoising steps than a plain one (what StepSaver predicts).

Everything is deterministic given a seed: scene ``i`` of seed ``s`` is drawn from its own generator
``numpy.random.default_rng([s, i])``, so it does not depend on how many scenes are drawn with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
OBJECT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
BACKGROUNDS = OBJECT_COLOURS + ("gray",)
RGB = {
    "red": (215, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (245, 225, 50),
    "green": (40, 160, 70),
    "blue": (45, 85, 215),
    "purple": (140, 65, 185),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
#: background patterns; "plain" is not said in a caption
PATTERNS = ("plain", "striped", "checkered")
_PATTERN_PROBABILITIES = (0.5, 0.25, 0.25)
#: classes of a label's background: (colour, pattern), plain ones first (their index is the colour's)
BACKGROUND_KINDS = tuple((colour, pattern) for pattern in PATTERNS for colour in BACKGROUNDS)
_STRIPE_PERIOD = 1 / 4  # diagonal stripes: one light and one dark band per quarter of the side
_CHECKER_CELL = 1 / 6  # checkerboard square, as a fraction of the side
SIZES = ("small", "big")
#: the 3x3 grid, row by row; a cell's index is row * 3 + column
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
MAX_OBJECTS = 5

#: diameter of an object as a fraction of the image side (a grid cell is 1/3)
_DIAMETER = {"small": 0.22, "big": 0.34}
_JITTER = 0.03  # largest offset of an object from its cell centre, as a fraction of the side
_SUPERSAMPLE = 4  # shapes are drawn this many times larger, then box-filtered down (anti-aliasing)

#: number of classes of a cell label: empty, or one of shape x colour
NUM_OBJECT_CLASSES = 1 + len(SHAPES) * len(OBJECT_COLOURS)


def _position_phrase(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's word list)."""
    words = ["a", "an", "two", "three", "and", "on", "at", "in", "the", "background"]
    words += [p for p in PATTERNS if p != "plain"] + list(SIZES) + list(BACKGROUNDS)
    words += list(SHAPES) + [PLURALS[s] for s in SHAPES]
    for position in POSITIONS:
        words += [w for w in position.split() if w not in words]
    return list(dict.fromkeys(words))


@dataclass(frozen=True)
class ObjectGroup:
    """What a caption says about one kind of object.

    Attributes:
        shape: one of SHAPES.
        colour: one of OBJECT_COLOURS.
        count: how many objects of this shape and colour (1-3).
        size: "small" or "big", or None when the caption does not say.
        position: one of POSITIONS for a single object whose caption gives its place, else None.
    """

    shape: str
    colour: str
    count: int = 1
    size: Optional[str] = None
    position: Optional[str] = None

    @property
    def object_class(self) -> int:
        """The cell-label class of these objects (see ``object_class``)."""
        return object_class(self.shape, self.colour)

    def phrase(self) -> str:
        """This group in words: "a big red circle on the left", "two blue squares"."""
        words = [COUNT_WORDS[self.count]]
        if self.count == 1 and (self.size or self.colour)[0] in "aeiou":
            words[0] = "an"
        if self.size:
            words.append(self.size)
        words += [self.colour, PLURALS[self.shape] if self.count > 1 else self.shape]
        if self.position:
            words.append(_position_phrase(self.position))
        return " ".join(words)


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says: the background colour, the object groups and the background pattern."""

    background: str
    groups: tuple[ObjectGroup, ...]
    pattern: str = "plain"

    @property
    def background_class(self) -> int:
        """Index of this background in BACKGROUND_KINDS."""
        return background_class(self.background, self.pattern)

    @property
    def num_objects(self) -> int:
        return sum(g.count for g in self.groups)

    def caption(self) -> str:
        """The caption of the scene, e.g. "a red circle on the left and two blue squares on a green background"."""
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return " and ".join(g.phrase() for g in self.groups) + f" on a {pattern}{self.background} background"


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: its kind, size, grid cell and offset from the cell centre (fractions of the side)."""

    shape: str
    colour: str
    size: str
    cell: int
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class SceneLabel:
    """The structured label of an image: background class, and per grid cell an object class and size.

    Attributes:
        background: index into BACKGROUND_KINDS (colour and pattern).
        cells: 9 cell classes, 0 for empty else ``object_class(shape, colour)``.
        sizes: 9 sizes, 0 small, 1 big (0 for empty cells).
    """

    background: int
    cells: np.ndarray
    sizes: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A sampled scene: the caption's content, the objects actually drawn and the pattern's phase."""

    spec: SceneSpec
    objects: tuple[PlacedObject, ...]
    phase: tuple[float, float] = (0.0, 0.0)

    @property
    def caption(self) -> str:
        return self.spec.caption()

    @property
    def label(self) -> SceneLabel:
        cells = np.zeros(9, dtype=np.int64)
        sizes = np.zeros(9, dtype=np.int64)
        for obj in self.objects:
            cells[obj.cell] = object_class(obj.shape, obj.colour)
            sizes[obj.cell] = SIZES.index(obj.size)
        return SceneLabel(self.spec.background_class, cells, sizes)

    def render(self, size: int = 32) -> np.ndarray:
        """The scene as a ``(size, size, 3)`` uint8 RGB array."""
        return render(self, size)


def object_class(shape: str, colour: str) -> int:
    """Cell-label class of an object: ``1 + shape_index * len(OBJECT_COLOURS) + colour_index``."""
    return 1 + SHAPES.index(shape) * len(OBJECT_COLOURS) + OBJECT_COLOURS.index(colour)


def background_class(colour: str, pattern: str = "plain") -> int:
    """Index of a background (colour, pattern) in BACKGROUND_KINDS."""
    return BACKGROUND_KINDS.index((colour, pattern))


def class_name(cls: int) -> str:
    """Words for a cell-label class: "empty" or "red circle"."""
    if cls == 0:
        return "empty"
    shape, colour = divmod(int(cls) - 1, len(OBJECT_COLOURS))
    return f"{OBJECT_COLOURS[colour]} {SHAPES[shape]}"


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene: background, 1-3 groups of distinct (shape, colour), at most MAX_OBJECTS objects.

    Single objects name their position in the caption three times out of four; sizes are named seven
    times out of ten (an unnamed size is still drawn, at random). Half of the backgrounds are plain, a
    quarter striped, a quarter checkered, at a random phase.
    """
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in OBJECT_COLOURS if c != background]
    num_groups = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    kinds: list[tuple[str, str]] = []
    while len(kinds) < num_groups:
        kind = (SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))])
        if kind not in kinds:
            kinds.append(kind)
    budget = MAX_OBJECTS
    counts = []
    for i in range(num_groups):
        count = int(rng.choice([1, 2, 3], p=[0.65, 0.22, 0.13]))
        count = min(count, budget - (num_groups - i - 1))  # leave one object for each later group
        counts.append(count)
        budget -= count
    free = list(rng.permutation(9))
    groups, objects = [], []
    drawn_sizes = [SIZES[rng.integers(2)] for _ in kinds]
    for (shape, colour), count, drawn_size in zip(kinds, counts, drawn_sizes):
        named_size = drawn_size if rng.random() < 0.7 else None
        cells = [int(free.pop()) for _ in range(count)]
        position = POSITIONS[cells[0]] if count == 1 and rng.random() < 0.75 else None
        groups.append(ObjectGroup(shape, colour, count, named_size, position))
        for cell in cells:
            dx, dy = rng.uniform(-_JITTER, _JITTER, size=2)
            scale = rng.uniform(0.93, 1.07)
            objects.append(PlacedObject(shape, colour, drawn_size, cell, float(dx), float(dy), float(scale)))
    order = rng.permutation(len(objects))
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=_PATTERN_PROBABILITIES))]
    phase = (float(rng.random()), float(rng.random()))
    return Scene(SceneSpec(background, tuple(groups), pattern), tuple(objects[i] for i in order), phase)


def scene(seed: int, index: int = 0) -> Scene:
    """Scene number ``index`` of the stream seeded with ``seed``."""
    return sample_scene(np.random.default_rng([seed, index]))


def scenes(seed: int, count: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + count - 1`` of the stream seeded with ``seed``."""
    return [scene(seed, i) for i in range(start, start + count)]


def _draw(draw: ImageDraw.ImageDraw, obj: PlacedObject, side: int) -> None:
    row, col = divmod(obj.cell, 3)
    cx = ((col + 0.5) / 3 + obj.dx) * side
    cy = ((row + 0.5) / 3 + obj.dy) * side
    r = _DIAMETER[obj.size] * obj.scale * side / 2
    fill = RGB[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif obj.shape == "cross":
        t = 0.33 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def pattern_shade(colour: str) -> tuple[int, int, int]:
    """The second colour of a patterned background: darker for light colours, lighter for dark ones."""
    rgb = np.array(RGB[colour], dtype=np.float64)
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114]))
    shade = rgb * 0.55 if luminance > 110 else rgb + (255 - rgb) * 0.45
    return tuple(int(round(v)) for v in shade)


def _background(spec: SceneSpec, phase: tuple[float, float], side: int) -> Image.Image:
    if spec.pattern == "plain":
        return Image.new("RGB", (side, side), RGB[spec.background])
    y, x = np.mgrid[0:side, 0:side] / side
    if spec.pattern == "striped":
        dark = ((x + y) / _STRIPE_PERIOD + phase[0]) % 1.0 >= 0.5
    elif spec.pattern == "checkered":
        dark = (np.floor(x / _CHECKER_CELL + phase[0]) + np.floor(y / _CHECKER_CELL + phase[1])) % 2 == 1
    else:
        raise ValueError(f"unknown background pattern {spec.pattern!r} (known: {PATTERNS})")
    pixels = np.where(dark[..., None], np.array(pattern_shade(spec.background)), np.array(RGB[spec.background]))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Draw a scene as a ``(size, size, 3)`` uint8 RGB array (anti-aliased by supersampling)."""
    side = size * _SUPERSAMPLE
    image = _background(scene.spec, scene.phase, side)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, side)
    return np.asarray(image.reduce(_SUPERSAMPLE))


def render_batch(batch: Sequence[Scene], size: int = 32) -> np.ndarray:
    """Draw scenes as one ``(n, size, size, 3)`` uint8 array."""
    return np.stack([render(s, size) for s in batch]) if batch else np.zeros((0, size, size, 3), np.uint8)


def stack_labels(labels: Iterable[SceneLabel]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels as arrays: backgrounds ``(n,)``, cells ``(n, 9)``, sizes ``(n, 9)``."""
    labels = list(labels)
    return (
        np.array([lab.background for lab in labels], dtype=np.int64),
        np.stack([lab.cells for lab in labels]) if labels else np.zeros((0, 9), np.int64),
        np.stack([lab.sizes for lab in labels]) if labels else np.zeros((0, 9), np.int64),
    )


_POSITION_RE = re.compile(r"^(.*?) (?:at|on|in) the (" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")$")
_WORD_COUNTS = {"a": 1, "an": 1, "two": 2, "three": 3}
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


def parse_caption(caption: str) -> SceneSpec:
    """Read a caption of the scene grammar back into a ``SceneSpec`` (inverse of ``SceneSpec.caption``).

    Raises:
        ValueError: the text is not a caption of this grammar; the message names the part that is not.
    """
    text = " ".join(caption.lower().replace(",", " ").split())
    patterns = "|".join(p for p in PATTERNS if p != "plain")
    match = re.fullmatch(rf"(.+) on a (?:({patterns}) )?(\w+) background", text)
    if not match or match.group(3) not in BACKGROUNDS:
        raise ValueError(f"{caption!r}: expected '... on a [striped|checkered] <colour> background' with a colour "
                         f"of {BACKGROUNDS}")
    groups = tuple(_parse_group(part, caption) for part in match.group(1).split(" and "))
    return SceneSpec(match.group(3), groups, match.group(2) or "plain")


def _parse_group(part: str, caption: str) -> ObjectGroup:
    position = None
    found = _POSITION_RE.match(part)
    if found:
        part, position = found.group(1), found.group(2)
    words = part.split()
    if len(words) not in (3, 4) or words[0] not in _WORD_COUNTS:
        raise ValueError(f"{caption!r}: cannot read {part!r} as '<a|two|three> [size] <colour> <shape>'")
    count = _WORD_COUNTS[words[0]]
    size = words[1] if len(words) == 4 else None
    colour, shape_word = words[-2], words[-1]
    shape = _SINGULAR.get(shape_word, shape_word) if count > 1 else shape_word
    if size is not None and size not in SIZES:
        raise ValueError(f"{caption!r}: unknown size {size!r} (known: {SIZES})")
    if colour not in OBJECT_COLOURS:
        raise ValueError(f"{caption!r}: unknown object colour {colour!r} (known: {OBJECT_COLOURS})")
    if shape not in SHAPES or (count > 1) != (shape_word in _SINGULAR):
        raise ValueError(f"{caption!r}: {shape_word!r} is not a shape (or the wrong number) for count {count}")
    if position is not None and count > 1:
        raise ValueError(f"{caption!r}: only single objects have a position")
    return ObjectGroup(shape, colour, count, size, position)
