"""Self-supervised warm start of the stage-1 backbone (SimCLR) on the unlabelled training patches.

For runs whose backbone would start from random init (offline, no pretrained weights): the backbone first
learns to tell augmented views of the same patch from views of other patches (NT-Xent contrastive loss, Chen et
al. 2020), then stage 1 starts from those weights. The weights go to ``<out_dir>/warm_start/backbone.pt``
beside ``warm_start.json``, which records the inputs; a later run with the same patches and settings reuses
them. Image-level labels are not used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from protoseg.cancel import CancelLike, check_cancelled
from protoseg.config import ProtosegConfig, WarmStart, fixed_input_size
from protoseg.data.augment import HEDJitter
from protoseg.models.backbone import build_backbone, planned_weights
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from protoseg.outputs import atomic_write_bytes, read_marker, replace_dir
from protoseg.runtime import select_device
from protoseg.train.distributed import barrier, init_distributed
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.train.outcome import FitResult

logger = logging.getLogger(__name__)

KIND = "warm-start"
STAGE = "warm start"  #: the stage name of its progress events
WEIGHTS_FILE = "backbone.pt"
RECORD_FILE = "warm_start.json"
#: Largest view side on a CNN: a CPU warm start stays within minutes (the network is convolutional, so
#: stage 1 may see larger patches than the views).
MAX_VIEW = 128
TEMPERATURE = 0.2
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
PROJECTION_DIM = 128
LOG_EVERY = 20


@dataclass(frozen=True)
class WarmStartPlan:
    """What a warm start trains on and how: the settings and patches that decide its weights."""

    backbone: str
    output_stride: int
    img_size: int | None
    view: int
    steps: int
    batch: int
    seed: int
    patches: str  # sha256 of the patch names, in dataset order

    def record(self) -> dict[str, Any]:
        return asdict(self)


def chance_loss(batch: int) -> float:
    """NT-Xent of embeddings that cannot tell patches apart: log(2B - 1), the yardstick its logs print."""
    return math.log(2 * batch - 1)


def wanted(cfg: ProtosegConfig) -> bool:
    """True when ``stage1.warm_start`` asks for one and the backbone would otherwise start from random init
    (a pretrained backbone keeps its weights: a warm start on a few hundred patches would only blur them)."""
    if cfg.stage1.warm_start is WarmStart.NONE:
        return False
    return not planned_weights(cfg.model.backbone, cfg.model.weights).pretrained


def _patch_names(dataset: Any) -> list[str]:
    """Names of a dataset's patches in order (from its records, through subsets, else from its samples)."""
    records = getattr(dataset, "records", None)
    if records is not None:
        return [str(getattr(r, "name", r)) for r in records]
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:
        names = _patch_names(inner)
        return [names[int(i)] for i in indices]
    return [str(dataset[i]["name"]) for i in range(len(dataset))]


def _names_digest(dataset: Dataset) -> str:
    return hashlib.sha256("\n".join(_patch_names(dataset)).encode()).hexdigest()


def plan_for(cfg: ProtosegConfig, dataset: Dataset) -> WarmStartPlan:
    """The warm start ``cfg`` asks for on ``dataset`` (views as large as its patches, at most ``MAX_VIEW``)."""
    patch_side = int(min(dataset[0]["image"].shape[-2:]))
    fixed = fixed_input_size(cfg, cfg.model.backbone)
    return WarmStartPlan(
        backbone=cfg.model.backbone,
        output_stride=cfg.model.output_stride,
        img_size=fixed,
        view=fixed if fixed is not None else max(16, min(MAX_VIEW, patch_side)),
        steps=cfg.stage1.warm_start_steps,
        batch=cfg.stage1.warm_start_batch,
        seed=cfg.run.seed,
        patches=_names_digest(dataset),
    )


def _matching(folder: Path, plan: WarmStartPlan) -> bool:
    """True when ``folder`` holds a finished warm start of exactly ``plan``."""
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is None or marker.get("kind") != KIND or not (folder / WEIGHTS_FILE).is_file():
        return False
    try:
        return json.loads((folder / RECORD_FILE).read_text()) == plan.record()
    except (OSError, ValueError):
        return False


class _Views:
    """A random view of each patch: resized crop (20-100 % of its area), flips, colour and stain jitter."""

    def __init__(self, view: int) -> None:
        from torchvision.transforms import v2

        self.crop = v2.Compose(
            [
                v2.RandomResizedCrop(view, scale=(0.2, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.ColorJitter(0.3, 0.3, 0.2, 0.04),
                v2.RandomGrayscale(0.1),
            ]
        )
        self.stain = HEDJitter()
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack([self.crop(im) for im in images])
        return (self.stain.apply_batch(x.clamp(0, 1)) - self.mean) / self.std


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss for ``z`` (2B, D): rows i and i + B are views of one patch, every other row a negative."""
    b = z.shape[0] // 2
    z = F.normalize(z, dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def train_warm_start(
    plan: WarmStartPlan,
    dataset: Dataset,
    device: torch.device,
    cancel: CancelLike | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """SimCLR on ``dataset``'s images as ``plan`` says; the backbone's (timm) state dict, on the CPU."""
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ValueError(f"a warm start needs at least 2 training patches, got {n}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        extra = {"img_size": plan.img_size} if plan.img_size is not None else {}
        backbone = build_backbone(plan.backbone, None, output_stride=plan.output_stride, **extra).to(device)
        dim = backbone.channels[-1]
        head = nn.Sequential(nn.Linear(dim, 512), nn.ReLU(inplace=True), nn.Linear(512, PROJECTION_DIM)).to(device)
        params = [*backbone.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        views = _Views(plan.view)
        batch = min(plan.batch, n)
        start = time.perf_counter()
        backbone.train()
        for step in range(plan.steps):
            check_cancelled(cancel, "the warm start")
            idx = torch.randperm(n)[:batch].tolist()
            images = [dataset[i]["image"] for i in idx]
            x = torch.cat([views(images), views(images)]).to(device)
            for group in opt.param_groups:  # cosine decay to 0
                group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / plan.steps))
            loss = nt_xent(head(backbone(x)[-1].mean(dim=(2, 3))))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(step + 1, plan.steps, float(loss.detach()))
            if step == 0 or (step + 1) % LOG_EVERY == 0 or step + 1 == plan.steps:
                spent = time.perf_counter() - start
                left = spent / (step + 1) * (plan.steps - step - 1)
                logger.info(
                    "warm start step %d/%d: contrastive loss %.3f (chance %.2f), about %.0f s left",
                    step + 1,
                    plan.steps,
                    float(loss.detach()),
                    chance_loss(batch),
                    left,
                )
    return {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}


def warm_start_weights(
    cfg: ProtosegConfig,
    dataset: Dataset,
    cancel: CancelLike | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """The warm-start weights file for this run: reused from ``<out_dir>/warm_start`` when it was trained on
    the same patches with the same settings, else trained now (``callbacks`` get its steps as stage
    ``STAGE`` events) and written there atomically."""
    plan = plan_for(cfg, dataset)
    folder = Path(cfg.run.out_dir) / "warm_start"
    device = select_device(cfg.run.device)
    ctx = init_distributed(device)  # under torchrun rank 0 trains and writes, the others wait and read
    if not ctx.is_main:
        barrier(ctx)
        if not _matching(folder, plan):
            raise RuntimeError(f"rank {ctx.rank}: rank 0 wrote no warm start matching this run in {folder}")
        return folder / WEIGHTS_FILE
    path = _main_process_weights(plan, folder, dataset, device, cancel, callbacks)
    barrier(ctx)
    return path


def _main_process_weights(
    plan: WarmStartPlan,
    folder: Path,
    dataset: Dataset,
    device: torch.device,
    cancel: CancelLike | None,
    callbacks: Sequence[Callback],
) -> Path:
    if _matching(folder, plan):
        logger.info("warm start: reusing %s (same patches and settings)", folder / WEIGHTS_FILE)
        return folder / WEIGHTS_FILE
    n = len(dataset)  # type: ignore[arg-type]
    batch = min(plan.batch, n)
    logger.info(
        "warm start: %d self-supervised steps of %d patch pairs (%d px views) on %d training patches before "
        "stage 1, because backbone %s has no pretrained weights (stage1.warm_start=none skips it)",
        plan.steps,
        batch,
        plan.view,
        n,
        plan.backbone,
    )
    emit(callbacks, TrainEvent(EventKind.START, STAGE, 0, 0, plan.steps, message="self-supervised warm start"))

    def on_step(step: int, total: int, loss: float) -> None:
        # not "loss": the Train dock plots that key on its stage-1 panel, whose steps count from 1 again
        msg = f"contrastive loss {loss:.3f} (chance {chance_loss(batch):.2f})"
        emit(callbacks, TrainEvent(EventKind.STEP, STAGE, 0, step, total, losses={"contrastive": loss}, message=msg))

    state = train_warm_start(plan, dataset, device, cancel, on_step)
    with replace_dir(folder, KIND) as tmp:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / WEIGHTS_FILE, buf.getbuffer())
        (tmp / RECORD_FILE).write_text(json.dumps(plan.record(), indent=1))
    emit(callbacks, TrainEvent(EventKind.END, STAGE, 0, plan.steps, plan.steps, path=str(folder / WEIGHTS_FILE)))
    return folder / WEIGHTS_FILE


def cancelled(last: Path, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Stage 1's outcome when it was cancelled during its warm start: nothing trained, no checkpoint."""
    logger.warning("cancelled during the warm start: stage 1 did not start and wrote no checkpoint")
    emit(callbacks, TrainEvent(EventKind.CANCELLED, STAGE, 0, 0, 0, message="cancelled"))
    return FitResult(last, None, None, 0, 0, True, 0.0)
