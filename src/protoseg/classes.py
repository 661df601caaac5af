"""Tissue class names and colours, carried together through datasets, checkpoints and exports."""

from __future__ import annotations

from dataclasses import dataclass, field

RGB = tuple[int, int, int]

#: Pixel value that marks "no label" in masks, pseudo-masks and targets (losses and metrics skip it).
IGNORE_INDEX: int = 255
#: Colour of IGNORE_INDEX in palette PNGs (uncertain pseudo-mask pixels show grey; RGB masks may use it too).
IGNORE_COLOR: RGB = (128, 128, 128)

#: Default palette used when a class has no colour of its own.
FALLBACK_COLORS: tuple[RGB, ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (153, 0, 255),
    (255, 165, 0),
    (0, 255, 255),
    (255, 0, 255),
    (128, 128, 0),
    (0, 128, 128),
    (128, 0, 0),
)


@dataclass(frozen=True)
class ClassSpec:
    """Ordered tissue classes with RGB colours; background is index ``len(names)`` in pixel maps."""

    names: tuple[str, ...]
    colors: tuple[RGB, ...] = field(default=())
    background_color: RGB = (255, 255, 255)
    background_name: str = "background"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("ClassSpec needs at least one class name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {self.names}")
        colors = tuple(tuple(int(v) for v in c) for c in self.colors)
        if not colors:
            colors = tuple(FALLBACK_COLORS[i % len(FALLBACK_COLORS)] for i in range(len(self.names)))
        if len(colors) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(colors)} colours")
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "background_color", tuple(int(v) for v in self.background_color))

    @property
    def num_classes(self) -> int:
        """Number of tissue classes (background excluded)."""
        return len(self.names)

    @property
    def background_index(self) -> int:
        """Index of background in pixel maps (after the tissue classes)."""
        return len(self.names)

    def palette(self) -> list[RGB]:
        """Colours for indices 0..C (tissue classes then background)."""
        return [*self.colors, self.background_color]

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "background_color": list(self.background_color),
            "background_name": self.background_name,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassSpec:
        return cls(
            names=tuple(d["names"]),
            colors=tuple(tuple(c) for c in d.get("colors", ())),
            background_color=tuple(d.get("background_color", (255, 255, 255))),
            background_name=d.get("background_name", "background"),
        )


BCSS_WSSS = ClassSpec(
    names=("TUM", "STR", "LYM", "NEC"),
    colors=((255, 0, 0), (0, 255, 0), (0, 0, 255), (153, 0, 255)),
)

LUAD_HISTOSEG = ClassSpec(
    names=("TE", "NEC", "LYM", "TAS"),
    colors=((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)),
)
