"""napari dock widgets: region tagging, training, image bank (and predict); thin GUIs over the library."""

from __future__ import annotations

__all__ = ["BankWidget", "PredictWidget", "RegionTagWidget", "TrainWidget", "guard_triton_llvm_clash"]


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
    if name == "PredictWidget":
        from protoseg.napari.widgets.predict import PredictWidget

        return PredictWidget
    if name == "guard_triton_llvm_clash":  # explicit, called before torchvision may load; not on import
        from protoseg.napari.widgets.jobs import guard_triton_llvm_clash

        return guard_triton_llvm_clash
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
