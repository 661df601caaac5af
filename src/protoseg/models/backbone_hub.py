"""Backbones named by Hugging Face hub id (``model.backbone: hf-hub:org/repo``): timm downloads them while the hub
is reachable; offline they build from the cached snapshot (its timm ``config.json`` and weights file)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from protoseg.models.backbone import (
    AUTO_WEIGHTS,
    HF_FILENAMES,
    HUB_WEIGHTS,
    BackboneError,
    WeightsError,
    WeightsInfo,
    WeightsKind,
    is_random,
    offline,
)
from protoseg.models.encoders.sources import (
    cached_snapshot,
    hub_cache_dir,
    hub_missing_message,
    hub_offline_reason,
    hub_repo,
    one_line,
)

logger = logging.getLogger(__name__)

#: timm's model-name prefix for a local model folder (config.json + weights), as ``hf download --local-dir`` writes.
LOCAL_DIR_PREFIX = "local-dir:"
#: The timm config file of a hub repo (``architecture``, ``model_args``, ``pretrained_cfg``...).
CONFIG_FILE = "config.json"
#: The settings a hub backbone comes from (named in error messages).
SETTINGS = "model.backbone / stage2.backbone"


@dataclass(frozen=True)
class HubModel:
    """A hub backbone's snapshot folder holding its config.json, the timm architecture the config names, and the
    weights file beside it (None when only the config is there)."""

    hub_id: str
    snapshot: Path
    architecture: str
    weights_file: Path | None

    @property
    def local_name(self) -> str:
        """The timm model name that builds from the snapshot folder alone (no network)."""
        return f"{LOCAL_DIR_PREFIX}{self.snapshot}"


@dataclass(frozen=True)
class HubPlan:
    """How ``build_backbone`` creates a hub backbone: the timm name for the planned weights, the name for random
    init of the same architecture, and what the weights will be."""

    model: HubModel
    timm_name: str
    info: WeightsInfo

    @property
    def random_name(self) -> str:
        return self.model.local_name


def read_hub_model(hub_id: str, snapshot: Path) -> HubModel:
    """The timm architecture and weights file of a snapshot folder; BackboneError when its config.json is not a
    timm config naming a model this timm knows."""
    import timm

    try:
        config = json.loads((snapshot / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"{hub_id}: cannot read {snapshot / CONFIG_FILE} ({one_line(exc)}); delete that snapshot folder "
            f"and download the repo again, or copy its {CONFIG_FILE} there"
        ) from exc
    arch = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(arch, str) or not arch:
        raise BackboneError(
            f"{hub_id} is not a timm model (its {CONFIG_FILE} names no 'architecture'); set {SETTINGS} to "
            "a timm hub model such as hf-hub:timm/resnet50.a1_in1k, or a timm architecture name"
        )
    if not timm.is_model(arch):
        raise BackboneError(
            f"{hub_id} needs timm architecture {arch!r}, unknown to timm {timm.__version__}; upgrade timm or "
            f"choose another {SETTINGS}"
        )
    weights = next((snapshot / n for n in HF_FILENAMES if (snapshot / n).is_file()), None)
    return HubModel(hub_id, snapshot, arch, weights)


def cached_hub_model(hub_id: str) -> HubModel | None:
    """``hub_id`` from the local Hugging Face cache when its snapshot holds a config.json, else None (no network)."""
    snapshot = cached_snapshot(hub_id)
    if snapshot is None or not (snapshot / CONFIG_FILE).is_file():
        return None
    return read_hub_model(hub_id, snapshot)


def _download_config(hub_id: str) -> HubModel:
    """Download the repo's config.json into the Hugging Face cache (as timm would) and read it."""
    from huggingface_hub import hf_hub_download

    repo, revision = hub_repo(hub_id)
    try:
        path = Path(hf_hub_download(repo, CONFIG_FILE, revision=revision, cache_dir=hub_cache_dir()))
    except Exception as exc:  # missing repo, gated repo, network: many types, one line
        raise WeightsError(
            f"could not get {CONFIG_FILE} of {hub_id} from the Hugging Face hub ({one_line(exc)}); check the id "
            f"in {SETTINGS} (a timm model repo, e.g. hf-hub:timm/resnet50.a1_in1k) and your access to it"
        ) from exc
    return read_hub_model(hub_id, path.parent)


def _missing(hub_id: str, why: str, from_checkpoint: bool) -> WeightsError:
    """One line: not cached, why not downloaded, what to copy where (the checkpoint case needs only config.json)."""
    repo, _ = hub_repo(hub_id)
    if from_checkpoint:
        tail = (
            f"; the checkpoint holds the trained weights, so the repo's {CONFIG_FILE} alone is enough "
            f"(in {repo}'s snapshots/<revision>/ folder, with refs/main naming that revision)"
        )
    else:
        tail = (
            f"; or set {SETTINGS} to the timm architecture its {CONFIG_FILE} names and model.weights / "
            "stage2.weights to its downloaded model.safetensors"
        )
    return WeightsError(hub_missing_message(hub_id, why) + tail)


def plan_hub_backbone(name: str, weights: str | None, from_checkpoint: bool = False) -> HubPlan:
    """How to build hub backbone ``name`` with ``weights`` (None/random, ``auto``, ``hub`` or a local file).

    A cached config.json builds random or file weights without the network. The repo's own weights (``auto`` /
    ``hub``) are handed to timm while the hub is reachable, else come from the cached snapshot; ``auto`` falls
    back to random init of the same architecture when they are missing. ``from_checkpoint``: the weights come
    from a checkpoint, so only the architecture is needed.
    """
    hub_id = name.strip()
    wants_hub = weights in (AUTO_WEIGHTS, HUB_WEIGHTS) and not from_checkpoint
    if is_random(weights) or from_checkpoint:
        kind, source = WeightsKind.RANDOM, ""
    else:
        kind, source = (WeightsKind.DOWNLOAD, hub_id) if wants_hub else (WeightsKind.FILE, str(weights))
    cached = cached_hub_model(hub_id)
    why = None if cached is not None and not wants_hub else hub_offline_reason()
    if why is None:  # only the architecture is needed and cached, or the hub is reachable
        model = cached if cached is not None and not wants_hub else _download_config(hub_id)
        if not wants_hub:
            return HubPlan(model, model.local_name, WeightsInfo(kind, hub_id, source, model.architecture))
        if model.weights_file is not None:  # timm reuses it unless the repo changed
            kind, source = WeightsKind.CACHE, str(model.weights_file)
        return HubPlan(model, hub_id, WeightsInfo(kind, hub_id, source, model.architecture))
    if cached is None:
        snapshot = cached_snapshot(hub_id)
        if snapshot is not None:  # a snapshot without the config
            raise WeightsError(
                f"{hub_id}: the cached snapshot {snapshot} has no {CONFIG_FILE} and {why}; copy the repo's "
                f"{CONFIG_FILE} (and model.safetensors) into that folder"
            )
        raise _missing(hub_id, why, from_checkpoint)
    logger.info("%s: %s; building it from the local Hugging Face cache %s", hub_id, why, cached.snapshot)
    if cached.weights_file is not None:
        kind, source = WeightsKind.CACHE, str(cached.weights_file)
    elif weights == AUTO_WEIGHTS:
        kind, source = WeightsKind.FALLBACK, ""
    else:
        raise WeightsError(
            f"{hub_id}: the cached snapshot {cached.snapshot} has {CONFIG_FILE} but no weights file "
            f"({' / '.join(HF_FILENAMES)}) and {why}; copy the repo's model.safetensors into that folder, or set "
            "model.weights / stage2.weights to 'auto' (random init with a warning), a local file or null"
        )
    return HubPlan(cached, cached.local_name, WeightsInfo(kind, hub_id, source, cached.architecture))


def planned_hub_weights(name: str, weights: str | None) -> WeightsInfo:
    """What ``build_backbone`` will use for hub backbone ``name``, from the cache alone (never the network)."""
    hub_id = name.strip()
    try:
        cached = cached_hub_model(hub_id)
    except (BackboneError, WeightsError):  # a broken cached config: the build names the problem
        cached = None
    arch = cached.architecture if cached is not None else ""
    if is_random(weights):
        return WeightsInfo(WeightsKind.RANDOM, hub_id, "", arch)
    if weights not in (AUTO_WEIGHTS, HUB_WEIGHTS):
        return WeightsInfo(WeightsKind.FILE, hub_id, str(weights), arch)
    if cached is not None and cached.weights_file is not None:
        return WeightsInfo(WeightsKind.CACHE, hub_id, str(cached.weights_file), arch)
    if weights == AUTO_WEIGHTS and offline():
        return WeightsInfo(WeightsKind.FALLBACK, hub_id, "", arch)
    return WeightsInfo(WeightsKind.DOWNLOAD, hub_id, hub_id, arch)
