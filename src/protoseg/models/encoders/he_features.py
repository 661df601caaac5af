"""Differentiable H&E colour and texture statistics (raw, unstandardised) behind ``HEDescriptor``.

Colour: RGB and optical-density statistics and Ruifrok-Johnston colour deconvolution into
haematoxylin (H), eosin (E) and residual channels, with soft (kernel) histograms. Texture:
multi-scale gradient magnitudes, local standard deviation, scale-normalised Laplacian-of-Gaussian
blob responses on H (nuclei size), structure-tensor coherence and sorted oriented gradient energy
(fibres). Everything is built from torch ops, so gradients reach the input pixels. Given per-pixel
weights, every statistic is a weighted spatial mean over the unmasked image, so a region's descriptor
describes its own pixels instead of a black fill (gradients then also reach the weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Ruifrok & Johnston (2001) stain OD vectors (rows: haematoxylin, eosin, DAB/residual).
RUIFROK_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
#: Soft histogram bin centres: H and E concentrations (natural-log OD units) and brightness.
H_BINS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.05, 1.4)
E_BINS = (-0.05, 0.05, 0.15, 0.25, 0.35, 0.45, 0.6, 0.8)
GREY_BINS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.97)
#: (pyramid level, sigma at that level) pairs for LoG; effective sigmas 1, 2, 3, 5 px.
LOG_SCALES = ((0, 1.0), (0, 2.0), (1, 1.5), (1, 2.5))
_EPS = 1e-6


def stain_matrix_inverse() -> Tensor:
    """Inverse of the row-normalised Ruifrok-Johnston matrix: OD (row vector) @ inverse = stains."""
    m = torch.tensor(RUIFROK_HED, dtype=torch.float64)
    m = m / m.norm(dim=1, keepdim=True)
    return torch.linalg.inv(m).float()


def optical_density(x: Tensor) -> Tensor:
    """Beer-Lambert optical density -ln((255 x + 1) / 256): 0 for white, about 5.5 for black."""
    return -torch.log((x.clamp(0.0, 1.0) * 255.0 + 1.0) / 256.0)


def stains(od: Tensor, minv: Tensor) -> Tensor:
    """Colour deconvolution: (N, 3, H, W) OD -> (N, 3, H, W) H, E, residual concentrations."""
    return torch.einsum("nchw,cs->nshw", od, minv.to(od))


def spatial_mean(t: Tensor, w: Tensor | None = None) -> Tensor:
    """(N, C) spatial mean of (N, C, H, W), weighted by (N, 1, H, W) ``w`` when given (sum w = 0 gives 0)."""
    if w is None:
        return t.mean(dim=(2, 3))
    return (t * w).sum(dim=(2, 3)) / (w.sum(dim=(2, 3)) + _EPS)


def _mean_std(t: Tensor, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel spatial (weighted) mean and (smooth) standard deviation of (N, C, H, W)."""
    mean = spatial_mean(t, w)
    var = spatial_mean((t - mean[..., None, None]).pow(2), w)
    return mean, torch.sqrt(var + _EPS)


def soft_histogram(v: Tensor, centres: tuple[float, ...], w: Tensor | None = None) -> Tensor:
    """Kernel histogram of (N, H, W) values: Gaussian memberships to the bin centres (pixels weighted by
    (N, 1, H, W) ``w`` when given), rows sum to 1."""
    c = torch.tensor(centres, dtype=v.dtype, device=v.device)
    width = torch.diff(c).mean() * 0.6
    logits = -((v.unsqueeze(1) - c.view(1, -1, 1, 1)) ** 2) / (2 * width**2)
    return spatial_mean(torch.softmax(logits, dim=1), w)


def _gaussian_1d(sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(t: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding."""
    g = _gaussian_1d(sigma, t.device, t.dtype)
    r = g.numel() // 2
    c = t.shape[1]
    t = F.pad(t, (r, r, r, r), mode="reflect")
    t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sobel(t: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel x/y derivatives (per pixel, /8) of (N, 1, H, W), replicate-padded."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=t.device, dtype=t.dtype) / 8
    p = F.pad(t, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(p, k.view(1, 1, 3, 3)), F.conv2d(p, k.t().reshape(1, 1, 3, 3))


def laplacian(t: Tensor) -> Tensor:
    """5-point discrete Laplacian of (N, 1, H, W), replicate-padded."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=t.device, dtype=t.dtype)
    return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))


def _pyramid(t: Tensor, levels: int) -> list[Tensor]:
    out = [t]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


def _grad_mag(t: Tensor) -> Tensor:
    gx, gy = sobel(t)
    return torch.sqrt(gx**2 + gy**2 + _EPS)


def _local_std(t: Tensor, window: int = 5) -> Tensor:
    r = window // 2
    p = F.pad(t, (r, r, r, r), mode="reflect")
    m = F.avg_pool2d(p, window, stride=1)
    m2 = F.avg_pool2d(p * p, window, stride=1)
    return torch.sqrt((m2 - m * m).clamp_min(0) + _EPS)


def _orientation_stats(t: Tensor, w: Tensor | None = None) -> Tensor:
    """(N, 6): local coherence, global anisotropy and 4 sorted, normalised orientation energies (sums over
    pixels weighted by ``w`` when given)."""
    gx, gy = sobel(t)
    jxx, jyy, jxy = (gaussian_blur(v, 2.0) for v in (gx * gx, gy * gy, gx * gy))
    if w is not None:
        jxx, jyy, jxy = jxx * w, jyy * w, jxy * w
    trace = jxx + jyy
    local = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2 + _EPS**2)
    if w is not None:
        local = local * (w > 0)  # a zero-weight pixel adds nothing (its smoothing floor included)
    coherence = local.sum(dim=(1, 2, 3)) / (trace.sum(dim=(1, 2, 3)) + _EPS)
    sxx, syy, sxy = (v.sum(dim=(1, 2, 3)) for v in (jxx, jyy, jxy))
    anisotropy = torch.sqrt((sxx - syy) ** 2 + 4 * sxy**2 + _EPS**2) / (sxx + syy + _EPS)
    angles = torch.arange(4, device=t.device, dtype=t.dtype) * (math.pi / 4)
    cos, sin = torch.cos(angles).view(1, 4, 1, 1), torch.sin(angles).view(1, 4, 1, 1)
    energy = spatial_mean((gx * cos + gy * sin) ** 2, w)
    energy = energy / (energy.sum(dim=1, keepdim=True) + _EPS)
    ordered = torch.sort(energy, dim=1, descending=True).values
    return torch.cat([coherence[:, None], anisotropy[:, None], ordered], dim=1)


def he_features(x: Tensor, minv: Tensor, weights: Tensor | None = None) -> Tensor:
    """Raw (N, 82) descriptor of (N, 3, H, W) float [0, 1] RGB images (see module docstring); with
    ``weights`` (N, 1, H, W) in [0, 1], of each image's weighted region (every mean weighted by them)."""
    od = optical_density(x)
    hed = stains(od, minv)
    h, e = hed[:, 0:1], hed[:, 1:2]
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    w = weights
    rgb_m, rgb_s = _mean_std(x, w)
    od_m, od_s = _mean_std(od.mean(dim=1, keepdim=True), w)
    hed_m, hed_s = _mean_std(hed, w)
    white = spatial_mean(torch.sigmoid((x.min(dim=1, keepdim=True).values - 0.86) / 0.02), w)
    colour = [
        rgb_m,
        rgb_s,
        od_m,
        od_s,
        hed_m,
        hed_s,
        white,
        soft_histogram(h[:, 0], H_BINS, w),
        soft_histogram(e[:, 0], E_BINS, w),
        soft_histogram(grey[:, 0], GREY_BINS, w),
    ]
    texture: list[Tensor] = []
    grey_p, h_p, e_p = _pyramid(grey, 3), _pyramid(h, 3), _pyramid(e, 3)
    w_p: list[Tensor | None] = [*_pyramid(w, 3)] if w is not None else [None, None, None]
    for level in range(3):  # gradient magnitude, local std and Laplacian energy at 3 scales
        wl = w_p[level]
        for t in (grey_p[level], h_p[level], e_p[level]):
            texture.append(spatial_mean(_grad_mag(t), wl))
        texture.append(spatial_mean(_local_std(grey_p[level]), wl))
        texture.append(spatial_mean(laplacian(grey_p[level]).abs(), wl))
    for level, sigma in LOG_SCALES:  # scale-normalised LoG on H: bright blobs = nuclei of that size
        wl = w_p[level]
        log = sigma**2 * laplacian(gaussian_blur(h_p[level], sigma))
        blob = F.relu(-log)
        texture += [spatial_mean(blob, wl), _mean_std(blob, wl)[1], spatial_mean(F.relu(log), wl)]
    for level in range(2):  # fibre orientation on grey and eosin
        wl = w_p[level]
        texture += [_orientation_stats(grey_p[level], wl), _orientation_stats(e_p[level], wl)[:, :2]]
    return torch.cat(colour + texture, dim=1)
