"""Per-class tissue textures as stain-density fields (H, E, red cells); one renderer per class.

Classes share colour ranges but differ at the nuclear scale: tumour = large pleomorphic vesicular
nuclei with nucleoli, stroma = wavy fibres with sparse spindle nuclei, lymphocytes = dense small
round dark nuclei, necrosis = pale debris with nuclear dust, ghost cells and (sometimes) blood.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from protoseg.data.synthetic.noise import fine_noise, jittered_points, smooth_noise, voronoi_edges
from protoseg.data.synthetic.nuclei import Nuclei, Profile, stamp

Fields = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # H bg, E bg, red cells, H nuclei (ODs)


def _nuclei(cy, cx, a, b, theta, strength, **kw) -> Nuclei:
    return Nuclei(
        cy=cy,
        cx=cx,
        a=np.asarray(a, float),
        b=np.asarray(b, float),
        theta=np.asarray(theta, float),
        strength=np.asarray(strength, float),
        **kw,
    )


def fibre_phase(shape, rng, angle: float, waviness: float, scale: float) -> np.ndarray:
    """Phase field whose level lines are wavy fibres running at ``angle`` (radians)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = waviness * smooth_noise(shape, scale, rng)
    return -xx * np.sin(angle) + yy * np.cos(angle) + warp


def fibre_angle_at(phase: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Local fibre direction (radians, x/y image coordinates) at the given points."""
    gy, gx = np.gradient(phase)
    iy, ix = np.round(cy).astype(int), np.round(cx).astype(int)
    return np.arctan2(-gx[iy, ix], gy[iy, ix])


def _fibres(shape, rng, angle, waviness, period) -> tuple[np.ndarray, np.ndarray]:
    """Fibrillar texture in [0, 1] (streaks along wavy fibres) and the fibre phase field."""
    scale = rng.uniform(25, 60)
    phase = fibre_phase(shape, rng, angle, min(waviness, 0.2 * scale), scale)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    u = (phase - phase.min()) / (0.45 * period)
    v = (along - along.min()) / rng.uniform(10, 20)
    grid = ndimage.gaussian_filter(rng.standard_normal((int(u.max()) + 3, int(v.max()) + 3)), 0.6)
    streak = ndimage.map_coordinates(grid, [u, v], order=1, prefilter=False)
    streak /= streak.std() + 1e-9
    bundles = 0.5 + 0.5 * np.sin(2 * np.pi * phase / (period * 3))
    return np.clip(0.5 + 0.3 * streak + 0.2 * (bundles - 0.5), 0, 1), phase


def tumour(shape, mask, rng) -> Fields:
    """Sheets, glands/cribriform or spindled nests of large pleomorphic nuclei."""
    kind = rng.choice(["solid", "glandular", "spindled"], p=[0.45, 0.3, 0.25])
    h_bg = rng.uniform(0.05, 0.25) * (1 + 0.3 * smooth_noise(shape, 12, rng))
    e_bg = rng.uniform(0.2, 0.5) * (1 + 0.25 * smooth_noise(shape, 8, rng) + 0.15 * fine_noise(shape, 1.0, rng))
    spacing = rng.uniform(15, 22) if kind != "glandular" else rng.uniform(13, 17)
    lumen = np.zeros(shape, bool)
    if kind == "glandular":
        lumen = smooth_noise(shape, rng.uniform(14, 26), rng) > rng.uniform(0.7, 1.2)
    cy, cx = jittered_points(shape, spacing, 0.18, rng, mask & ~lumen)
    n = cy.size
    size = spacing * rng.uniform(0.36, 0.48) * rng.lognormal(0, 0.2, n)
    if kind == "spindled":
        theta = fibre_angle_at(fibre_phase(shape, rng, rng.uniform(0, np.pi), 10, 40), cy, cx)
        a, b = size * rng.uniform(1.4, 1.8, n), size * rng.uniform(0.45, 0.6, n)
        f, _ = _fibres(shape, rng, rng.uniform(0, np.pi), 8, rng.uniform(6, 9))
        e_bg = e_bg * (0.8 + 0.4 * f)
    else:
        theta, a, b = rng.uniform(0, np.pi, n), size, size * rng.uniform(0.65, 0.95, n)
        if kind == "glandular" and lumen.any():  # columnar nuclei pointing at the lumen
            dist, (ly, lx) = ndimage.distance_transform_edt(~lumen, return_indices=True)
            iy, ix = np.round(cy).astype(int), np.round(cx).astype(int)
            near = dist[iy, ix] < spacing * 1.3
            theta = np.where(near, np.arctan2(ly[iy, ix] - cy, lx[iy, ix] - cx), theta)
            a = np.where(near, a * 1.25, a)
    nuc = _nuclei(
        cy,
        cx,
        a,
        b,
        theta,
        rng.uniform(1.1, 1.8, n) * rng.uniform(0.8, 1.2),
        irregularity=0.12,
        nucleoli=np.where(rng.random(n) < 0.6, rng.uniform(0.8, 1.6, n), 0.0),
    )
    h_nuc = stamp(shape, nuc, Profile.VESICULAR, rng, texture=0.35 * fine_noise(shape, 0.8, rng))
    membranes = voronoi_edges(shape, cy, cx) * rng.uniform(0.08, 0.2)
    soft_lumen = ndimage.gaussian_filter(lumen.astype(float), 1.0)
    e = (e_bg + membranes) * (1 - 0.85 * soft_lumen)
    return h_bg * (1 - soft_lumen), e, np.zeros(shape), h_nuc


def stroma(shape, mask, rng) -> Fields:
    """Collagen fibres (straight, wavy or loose) with sparse spindle nuclei along them."""
    kind = rng.choice(["dense", "wavy", "loose", "cellular"], p=[0.3, 0.3, 0.2, 0.2])
    waviness = {"dense": 3, "wavy": 12, "loose": 8, "cellular": 6}[kind] * rng.uniform(0.6, 1.4)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 9)
    f, phase = _fibres(shape, rng, angle, waviness, period)
    base = {"dense": (0.55, 0.9), "wavy": (0.4, 0.75), "loose": (0.25, 0.45), "cellular": (0.35, 0.6)}[kind]
    e = rng.uniform(*base) * (0.45 + 0.75 * f) * (1 + 0.2 * smooth_noise(shape, 10, rng))
    clefts = np.sin(2 * np.pi * phase / (period * rng.uniform(4, 8)) + 1.5 * smooth_noise(shape, 30, rng))
    e = e * np.where(clefts > (0.85 if kind == "loose" else 0.95), 0.15, 1.0)
    h_bg = rng.uniform(0.02, 0.15) * (1 + 0.3 * smooth_noise(shape, 15, rng))
    spacing = {"cellular": rng.uniform(16, 22)}.get(kind, rng.uniform(26, 40))
    cy, cx = jittered_points(shape, spacing, 0.45, rng, mask)
    n = cy.size
    theta = fibre_angle_at(phase, cy, cx) + rng.normal(0, 0.15, n)
    nuc = _nuclei(
        cy, cx, rng.uniform(6, 12, n), rng.uniform(1.6, 2.8, n), theta, rng.uniform(1.0, 1.8, n), irregularity=0.08
    )
    h_nuc = stamp(shape, nuc, Profile.SOLID, rng, texture=0.2 * fine_noise(shape, 0.8, rng))
    # a few scattered inflammatory cells so that "small dark round nucleus" alone is not LYM
    ly, lx = jittered_points(shape, rng.uniform(30, 60), 0.5, rng, mask, keep=0.5)
    m = ly.size
    h_nuc += stamp(
        shape,
        _nuclei(
            ly, lx, rng.uniform(3, 4.5, m), rng.uniform(2.8, 4, m), rng.uniform(0, np.pi, m), rng.uniform(1.5, 2.2, m)
        ),
        Profile.SOLID,
        rng,
    )
    return h_bg, e, np.zeros(shape), h_nuc


def lymphocytes(shape, mask, rng) -> Fields:
    """Dense aggregates to loose infiltrates of small round dark nuclei."""
    kind = rng.choice(["aggregate", "moderate", "infiltrate"], p=[0.45, 0.35, 0.2])
    keep = {"aggregate": 0.97, "moderate": 0.75, "infiltrate": 0.5}[kind]
    spacing = rng.uniform(8.5, 11.5)
    cy, cx = jittered_points(shape, spacing, 0.22, rng, mask, keep=keep)
    n = cy.size
    r = rng.uniform(3.2, 4.4) * rng.lognormal(0, 0.08, n)
    big = rng.random(n) < 0.05  # occasional plasma cells / histiocytes
    r = np.where(big, r * 1.6, r)
    nuc = _nuclei(
        cy,
        cx,
        r,
        r * rng.uniform(0.85, 1.0, n),
        rng.uniform(0, np.pi, n),
        np.where(big, 1.1, rng.uniform(1.5, 2.3, n)),
        irregularity=0.05,
    )
    h_nuc = stamp(shape, nuc, Profile.SOLID, rng, texture=0.2 * fine_noise(shape, 0.7, rng))
    e = rng.uniform(0.15, 0.4) * (1 + 0.25 * smooth_noise(shape, 10, rng))
    if kind != "aggregate":  # lymphocytes sitting in stroma
        f, _ = _fibres(shape, rng, rng.uniform(0, np.pi), 8, rng.uniform(5, 9))
        e = e * (0.6 + 0.9 * f)
    h_bg = rng.uniform(0.05, 0.2) * (1 + 0.3 * smooth_noise(shape, 12, rng))
    return h_bg, e, np.zeros(shape), h_nuc


def necrosis(shape, mask, rng) -> Fields:
    """Pale eosinophilic debris: ghost cells, karyorrhectic nuclear dust, optional haemorrhage."""
    kind = rng.choice(["coagulative", "dirty", "hemorrhagic"], p=[0.35, 0.4, 0.25])
    e = rng.uniform(0.3, 0.6) * (1 + 0.3 * smooth_noise(shape, 10, rng) + 0.25 * fine_noise(shape, 1.2, rng))
    h_bg = rng.uniform(0.05, 0.15) + (rng.uniform(0.1, 0.35) if kind == "dirty" else 0.0) * np.clip(
        1 + smooth_noise(shape, 18, rng), 0, None
    )
    gy, gx = jittered_points(shape, rng.uniform(14, 20), 0.2, rng, mask)
    e = e + voronoi_edges(shape, gy, gx) * rng.uniform(0.05, 0.15)  # ghost-cell outlines
    g = gy.size
    ghost = rng.random(g) < (0.7 if kind == "coagulative" else 0.35)
    gs = rng.uniform(4, 7, g)
    h_nuc = stamp(
        shape,
        _nuclei(
            gy[ghost],
            gx[ghost],
            gs[ghost],
            gs[ghost] * 0.85,
            rng.uniform(0, np.pi, g)[ghost],
            rng.uniform(0.25, 0.6, int(ghost.sum())),
        ),
        Profile.RING,
        rng,
    )
    # karyorrhexis: clusters of tiny dark fragments
    ky, kx = jittered_points(shape, rng.uniform(14, 22) if kind == "dirty" else rng.uniform(22, 34), 0.4, rng, mask)
    per = rng.integers(3, 9, ky.size)
    fy = np.repeat(ky, per) + rng.normal(0, 3.0, per.sum())
    fx = np.repeat(kx, per) + rng.normal(0, 3.0, per.sum())
    ok = (fy >= 0) & (fy <= shape[0] - 1) & (fx >= 0) & (fx <= shape[1] - 1)
    fy, fx = fy[ok], fx[ok]
    k = fy.size
    fr = rng.uniform(0.8, 2.2, k)
    h_nuc += stamp(
        shape,
        _nuclei(fy, fx, fr, fr * rng.uniform(0.6, 1.0, k), rng.uniform(0, np.pi, k), rng.uniform(1.3, 2.4, k)),
        Profile.SOLID,
        rng,
    )
    red = np.zeros(shape)
    if kind == "hemorrhagic":
        blood = mask & (smooth_noise(shape, rng.uniform(15, 30), rng) > rng.uniform(-0.3, 0.5))
        ry, rx = jittered_points(shape, rng.uniform(6.5, 8), 0.2, rng, blood)
        m = ry.size
        rr = rng.uniform(2.8, 3.8, m)
        red = stamp(
            shape,
            _nuclei(ry, rx, rr, rr * rng.uniform(0.8, 1.0, m), rng.uniform(0, np.pi, m), rng.uniform(0.9, 1.5, m)),
            Profile.PALLOR,
            rng,
        )
        e = e * (1 - 0.5 * ndimage.gaussian_filter(blood.astype(float), 2))
    return h_bg, e, red, h_nuc


RENDERERS = (tumour, stroma, lymphocytes, necrosis)
