"""napari dock widgets: region tagging, training, image bank (and predict); thin GUIs over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["BankWidget", "RegionTagWidget", "TrainWidget", "guard_triton_llvm_clash"]


def guard_triton_llvm_clash() -> bool:
    """Keep triton out of a process whose OpenGL driver already loaded Mesa's libLLVM (llvmpipe, radeonsi).

    Loading triton's own LLVM after that segfaults the viewer; torch imports triton only for
    ``torch.compile`` (torchvision -> torch._dynamo probes for it), which protoseg does not use.
    Returns True when triton was marked unavailable.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa libLLVM clash
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    logger.info("OpenGL uses Mesa's LLVM: triton disabled in this napari session to avoid an LLVM clash")
    return True


guard_triton_llvm_clash()


def __getattr__(name: str):  # lazy: importing the package must not import Qt/napari
    if name == "RegionTagWidget":
        from protoseg.napari.widgets.regions import RegionTagWidget

        return RegionTagWidget
    if name == "TrainWidget":
        from protoseg.napari.widgets.train import TrainWidget

        return TrainWidget
    if name == "BankWidget":
        from protoseg.napari.widgets.bank import BankWidget

        return BankWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
