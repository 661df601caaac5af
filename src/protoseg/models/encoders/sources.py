"""Where encoder weights come from, torch-free: a hub tag, an ``hf-hub:`` id (online, or from the local
Hugging Face cache when offline), a local file or folder, or nothing (seeded random init).

An ``hf-hub:org/repo`` id is handed to open_clip / timm as is while the hub is reachable (they download into,
or reuse, the Hugging Face cache). Offline (``HF_HUB_OFFLINE=1``, ``PROTOSEG_OFFLINE=1`` or no route to the
hub) the id loads from its cached snapshot folder, and a missing one raises one line naming the id, the cache
folder looked in and what to copy where.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from protoseg.models.encoders.errors import PRETRAINED_SETTING, EncoderWeightsError

logger = logging.getLogger(__name__)

#: Seed of the random initialisation, so that a random-init encoder gives reproducible embeddings.
RANDOM_INIT_SEED = 0
#: Prefix of Hugging Face hub model ids, as open_clip and timm spell them.
HUB_PREFIX = "hf-hub:"
#: Where else users set the weights (named in error messages beside the config key).
WEIGHTS_ELSEWHERE = "CLI --encoder-weights, Image bank dock 'Weights'"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar", ".npz")


class WeightKind(str, Enum):
    """Kind of weight source."""

    RANDOM = "random"
    FILE = "file"
    DIRECTORY = "directory"
    HF_HUB = "hf-hub"
    TAG = "tag"


@dataclass(frozen=True)
class WeightSource:
    """A resolved ``pretrained`` setting: its kind and the value to hand to the model library."""

    kind: WeightKind
    value: str | None = None

    def id_suffix(self) -> str:
        """Short stable string for encoder ids: tag, hub id, file name + size, or the random seed."""
        if self.kind is WeightKind.RANDOM:
            return f"random-seed{RANDOM_INIT_SEED}"
        if self.kind is WeightKind.FILE:
            p = Path(self.value or "")
            return f"file:{p.name}:{p.stat().st_size}"
        if self.kind is WeightKind.DIRECTORY:
            return f"dir:{Path(self.value or '').name}"
        return str(self.value)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.startswith((".", "~")) or value.lower().endswith(_WEIGHT_SUFFIXES)
    ) and not value.startswith(HUB_PREFIX)


def resolve_weights(
    pretrained: str | os.PathLike | None, model_name: str, setting: str = PRETRAINED_SETTING
) -> WeightSource:
    """Classify a ``pretrained`` value; a path that does not exist raises ``EncoderWeightsError`` now."""
    if pretrained is None or str(pretrained).strip() == "":
        return WeightSource(WeightKind.RANDOM)
    value = str(pretrained).strip()
    if value.startswith(HUB_PREFIX):
        return WeightSource(WeightKind.HF_HUB, value)
    expanded = os.path.expanduser(value)
    if os.path.isfile(expanded):
        return WeightSource(WeightKind.FILE, os.path.abspath(expanded))
    if os.path.isdir(expanded):
        return WeightSource(WeightKind.DIRECTORY, os.path.abspath(expanded))
    if isinstance(pretrained, os.PathLike) or _looks_like_path(value):
        raise EncoderWeightsError(
            f"weights file {value!r} for encoder {model_name!r} does not exist; set `{setting}` to an "
            "existing local checkpoint file or model folder (e.g. /data/weights/model.pt), an hf-hub:org/repo "
            "id, a hub tag, or null for random init"
        )
    return WeightSource(WeightKind.TAG, value)


def hub_repo(hub_id: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` -> (``"org/repo"``, ``"rev"`` or None)."""
    repo, _, revision = hub_id.removeprefix(HUB_PREFIX).partition("@")
    return repo, revision or None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder huggingface_hub uses (``HF_HUB_CACHE``, ``HF_HOME``/hub, ...)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_cache_folder_name(repo: str) -> str:
    """The cache's folder of a model repo: ``org/repo`` -> ``models--org--repo``."""
    return "models--" + repo.replace("/", "--")


def cached_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot folder of ``hub_id`` (its revision, else ``main``), or None; never uses the network."""
    from huggingface_hub import snapshot_download

    repo, revision = hub_repo(hub_id)
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), bad id or revision: no snapshot
        return None
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used now (an offline variable, or no route to it), or None when it can."""
    from protoseg.models.backbone import OFFLINE_ENV, hub_reachable

    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]} forbids downloads"
    if not hub_reachable():
        return "the Hugging Face hub cannot be reached"
    return None


def hub_missing_message(hub_id: str, why: str) -> str:
    """One line: ``hub_id`` is not cached (naming the cache folder), why it was not downloaded, and how to copy
    the repo's cache folder into this cache; callers append their own alternative."""
    repo, _ = hub_repo(hub_id)
    cache, folder = hub_cache_dir(), hub_cache_folder_name(repo)
    return (
        f"{hub_id} is not in the local Hugging Face cache {cache} (no {folder}/snapshots there) and {why}. "
        f"On a connected machine run `hf download {repo}` (older clients: `huggingface-cli download {repo}`) "
        f"and copy ~/.cache/huggingface/hub/{folder} into {cache}"
    )


def hub_missing_error(hub_id: str, why: str, setting: str = PRETRAINED_SETTING) -> EncoderWeightsError:
    """``hub_missing_message`` plus the encoder's alternative: a downloaded folder set as the weights."""
    repo, _ = hub_repo(hub_id)
    return EncoderWeightsError(
        f"{hub_missing_message(hub_id, why)}; or run `hf download {repo} --local-dir {repo.rsplit('/', 1)[-1]}`, "
        f"copy that folder here and set `{setting}` ({WEIGHTS_ELSEWHERE}) to its path"
    )


def offline_hub_folder(hub_id: str, setting: str = PRETRAINED_SETTING) -> Path | None:
    """None while the hub can be used (the model library downloads or reuses its cache); offline, the cached
    snapshot folder of ``hub_id`` to load from, or ``hub_missing_error`` when it is not cached."""
    why = hub_offline_reason()
    if why is None:
        return None
    folder = cached_snapshot(hub_id)
    if folder is None:
        raise hub_missing_error(hub_id, why, setting)
    logger.info("%s: %s; loading it from the local Hugging Face cache %s", hub_id, why, folder)
    return folder


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (hub errors span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split()).rstrip('. ')}"


#: Weight file patterns a local model folder may hold.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth")


def require_model_folder(folder: str, setting: str, config_file: str, hint: str) -> Path:
    """``folder`` as a Path when it holds ``config_file`` and a weights file; else one ``EncoderWeightsError``
    naming the setting, what is missing and ``hint`` (what a complete folder is)."""
    path = Path(folder)
    weights = [p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern)]
    if not (path / config_file).is_file() or not weights:
        raise EncoderWeightsError(
            f"`{setting}` = {folder!r} is a folder but lacks {config_file} or a weights file "
            f"(.safetensors / .bin / .pth); point it at {hint}, or at a checkpoint file"
        )
    return path
