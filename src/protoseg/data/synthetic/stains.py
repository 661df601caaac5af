"""Per-image stain model: haematoxylin, eosin and red-cell optical-density vectors (Beer-Lambert)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Typical H&E optical-density directions (Macenko-style estimates) and a red-blood-cell direction.
H_VECTOR = np.array([0.5626, 0.7201, 0.4062])
E_VECTOR = np.array([0.2159, 0.8012, 0.5581])
R_VECTOR = np.array([0.07, 0.74, 0.66])


def _perturb(v: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    v = np.clip(v + rng.normal(0, sd, 3), 0.02, None)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Stain:
    """Stain vectors (unit rows), intensity multipliers and glass brightness of one image."""

    h: np.ndarray
    e: np.ndarray
    r: np.ndarray
    h_scale: float
    e_scale: float
    glass: np.ndarray  # (3,) transmitted light through blank glass, 0..255

    @classmethod
    def random(cls, rng: np.random.Generator) -> Stain:
        """Draw a plausible stain appearance (lab-to-lab and scanner variation)."""
        return cls(
            h=_perturb(H_VECTOR, 0.05, rng),
            e=_perturb(E_VECTOR, 0.05, rng),
            r=_perturb(R_VECTOR, 0.05, rng),
            h_scale=float(rng.uniform(0.6, 1.4)),
            e_scale=float(rng.uniform(0.55, 1.35)),
            glass=np.clip(rng.uniform(228, 252) + rng.normal(0, 4, 3), 200, 255),
        )

    def to_rgb(
        self,
        h_od: np.ndarray,
        e_od: np.ndarray,
        r_od: np.ndarray,
        rng: np.random.Generator,
        blur: float = 0.6,
        noise: float = 2.0,
    ) -> np.ndarray:
        """Compose stain densities (H, W) into uint8 RGB with slight optical blur and sensor noise."""
        od = (
            h_od[..., None] * (self.h_scale * self.h)
            + e_od[..., None] * (self.e_scale * self.e)
            + r_od[..., None] * self.r
        )
        if blur > 0:
            od = ndimage.gaussian_filter(od, (blur, blur, 0))
        rgb = self.glass * np.exp(-od) + rng.normal(0, noise, od.shape)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
