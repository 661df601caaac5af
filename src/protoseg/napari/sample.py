"""napari sample data: the synthetic H&E pyramid shipped in ``sample_data/`` (regenerated if absent)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from protoseg.napari.reader import LayerData, slide_layer_data

logger = logging.getLogger(__name__)

#: File name of the sample; how it is rendered is ``protoseg.data.synthetic.SAMPLE_SLIDE``
#: (`protoseg synth slide sample_data/synthetic_slide.tiff` with the defaults).
SAMPLE_NAME = "synthetic_slide.tiff"


def sample_slide_path() -> Path:
    """The committed sample slide in a source checkout, else a copy generated into the user cache."""
    repo_copy = Path(__file__).resolve().parents[3] / "sample_data" / SAMPLE_NAME
    if repo_copy.is_file():
        return repo_copy
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "protoseg" / SAMPLE_NAME
    if not cache.is_file():
        from protoseg.data.synthetic.writers import SAMPLE_SLIDE

        logger.info("generating the protoseg sample slide into %s", cache)
        SAMPLE_SLIDE.write(cache)
    return cache


def sample_slide() -> list[LayerData]:
    """napari sample-data command."""
    return [slide_layer_data(sample_slide_path())]
