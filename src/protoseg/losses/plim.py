"""PLIM: prompt / language-image matching losses between masked-image and class-text features.

PLIMSeg-style add-on (prompt-guided language-image matching for WSSS in histopathology):
t_k = I(X*M_k), b_k = I(X*(1-M_k)), q_k = T(prompt of class k) and
  L_TTP = -sum_k y_k log sim(t_k, q_k),
  L_BTP = -sum_k y_k log(1 - sim(b_k, q_k)),
  L_TBP = -sum_k sum_{l != k} y_k log(1 - sim(t_k, q_l)),
with default weights 10, 24, 1 and similarities clamped into (eps, 1 - eps).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from protoseg.losses._common import LossInputError, check_ndim, check_same, zero_like_graph

DEFAULT_TEMPLATE = "a histopathology image of {}"

#: Words a prompt uses for the class keys of BCSS-WSSS (TUM/STR/LYM/NEC) and LUAD-HistoSeg (TE/NEC/LYM/TAS):
#: the abbreviations stay the class keys, the text encoder reads full names (PLIMSeg prompts).
CLASS_DESCRIPTIONS: dict[str, str] = {
    "TUM": "tumor",
    "STR": "stroma",
    "LYM": "lymphocytic infiltrate",
    "NEC": "necrosis",
    "TE": "tumor epithelium",
    "TAS": "tumor-associated stroma",
}


def prompt_names(class_names: Sequence[str], descriptions: Sequence[str] | Mapping[str, str] = ()) -> list[str]:
    """Full names for the prompts: ``descriptions`` ("KEY=full name" items or a mapping) first, then
    ``CLASS_DESCRIPTIONS``, else the class key itself (case-insensitive key match)."""
    if isinstance(descriptions, Mapping):
        given = {str(k).upper(): str(v) for k, v in descriptions.items()}
    else:
        given = {}
        for item in descriptions:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip() or not text.strip():
                raise LossInputError(
                    f"stage1.plim.descriptions item {item!r} must look like KEY=full name (e.g. LYM=lymphocytes)"
                )
            given[key.strip().upper()] = text.strip()
    unknown = sorted(set(given) - {n.upper() for n in class_names})
    if unknown:
        raise LossInputError(f"stage1.plim.descriptions names unknown classes {unknown}; classes: {list(class_names)}")
    table = {k.upper(): v for k, v in CLASS_DESCRIPTIONS.items()}
    return [given.get(n.upper(), table.get(n.upper(), n)) for n in class_names]


class _TextEncoder(Protocol):
    def encode_text(self, texts: list[str]) -> Tensor: ...


@dataclass(frozen=True)
class PromptTemplates:
    """Text prompt templates for the class names; several templates are averaged per class."""

    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)

    def __post_init__(self) -> None:
        if not self.templates or any("{}" not in t for t in self.templates):
            raise LossInputError(
                f"each prompt template needs a '{{}}' placeholder for the class name, got {self.templates}"
            )

    def prompts(self, class_names: Sequence[str]) -> list[str]:
        """All prompts, class-major: class 0 with every template, then class 1, ..."""
        return [t.format(name) for name in class_names for t in self.templates]

    def encode(self, text_encoder: _TextEncoder, class_names: Sequence[str]) -> Tensor:
        """Class text features q (C, d): mean of the L2-normalised template features, renormalised."""
        feats = text_encoder.encode_text(self.prompts(class_names))
        expected = len(class_names) * len(self.templates)
        if feats.ndim != 2 or feats.shape[0] != expected:
            raise LossInputError(f"text encoder returned shape {tuple(feats.shape)}, expected ({expected}, d)")
        feats = F.normalize(feats, dim=-1).reshape(len(class_names), len(self.templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)


class SimilarityMapping(str, enum.Enum):
    """How a cosine similarity becomes a probability-like value in (0, 1)."""

    CLAMP = "clamp"  #: clamp(cos, eps, 1 - eps), as in PLIMSeg
    AFFINE = "affine"  #: clamp((cos + 1) / 2, eps, 1 - eps); keeps gradients for negative cosines


@dataclass(frozen=True)
class PlimLoss:
    """Weighted PLIM total and its three terms (each averaged over present pairs)."""

    total: Tensor
    l_ttp: Tensor
    l_btp: Tensor
    l_tbp: Tensor


def plim_similarity(
    a: Tensor,
    b: Tensor,
    eps: float = 1e-4,
    mapping: SimilarityMapping | str = SimilarityMapping.CLAMP,
) -> Tensor:
    """Pairwise (N, M) similarity in [eps, 1 - eps] between rows of a (N, d) and b (M, d)."""
    cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    if SimilarityMapping(mapping) is SimilarityMapping.AFFINE:
        cos = (cos + 1.0) / 2.0
    return cos.clamp(eps, 1.0 - eps)


def plim_losses(
    t: Tensor,
    b: Tensor,
    q: Tensor,
    class_index: Tensor,
    eps: float = 1e-4,
    weights: tuple[float, float, float] = (10.0, 24.0, 1.0),
    mapping: SimilarityMapping | str = SimilarityMapping.CLAMP,
) -> PlimLoss:
    """PLIM L = w1*L_TTP + w2*L_BTP + w3*L_TBP over present (image, class) rows.

    ``t`` (N, d) features of X*M_k, ``b`` (N, d) features of X*(1-M_k), ``q`` (C, d) class text
    features, ``class_index`` (N,) class k of each row (every row is a present pair, y_k = 1).
    Cosine similarity (inputs L2-normalised here) is mapped by ``mapping`` (default: clamped into
    [eps, 1-eps], PLIMSeg) so the logs stay finite. Each term is the mean over rows of its
    per-row sum; no rows gives zeros with gradient.
    """
    check_ndim("t", t, 2, "(N, d)")
    check_ndim("b", b, 2, "(N, d)")
    check_ndim("q", q, 2, "(C, d)")
    check_ndim("class_index", class_index, 1, "(N,)")
    check_same("t rows", t.shape[0], "class_index length", class_index.shape[0])
    check_same("b rows", b.shape[0], "class_index length", class_index.shape[0])
    check_same("t dim", t.shape[1], "q dim", q.shape[1])
    check_same("b dim", b.shape[1], "q dim", q.shape[1])
    if not 0.0 < eps < 0.5:
        raise LossInputError(f"eps must be in (0, 0.5), got {eps}")
    n_classes = q.shape[0]
    if class_index.numel() and (class_index.min() < 0 or class_index.max() >= n_classes):
        raise LossInputError(f"class_index values must be in [0, {n_classes - 1}]")
    w_ttp, w_btp, w_tbp = (float(w) for w in weights)
    if class_index.numel() == 0:
        zero = zero_like_graph(t, b, q)
        return PlimLoss(total=zero, l_ttp=zero, l_btp=zero, l_tbp=zero)
    idx = class_index.long()
    own = F.one_hot(idx, n_classes).bool()  # (N, C)
    sim_t = plim_similarity(t, q, eps, mapping)  # (N, C)
    sim_b = plim_similarity(b, q, eps, mapping)
    l_ttp = -torch.log(sim_t[own]).mean()
    l_btp = -torch.log1p(-sim_b[own]).mean()
    l_tbp = -(torch.log1p(-sim_t) * (~own)).sum(dim=1).mean()
    total = w_ttp * l_ttp + w_btp * l_btp + w_tbp * l_tbp
    return PlimLoss(total=total, l_ttp=l_ttp, l_btp=l_btp, l_tbp=l_tbp)
