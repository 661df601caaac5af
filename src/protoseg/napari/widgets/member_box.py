"""The box protoseg draws on a slide around a bank member's patch (Image bank dock, *go to member*): one
Shapes layer marked as protoseg's (``metadata["protoseg"]["role"] == "bank-member-box"``), reused for each
member so boxes never pile up."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes

from protoseg.napari.widgets.overlay_layers import add_layer_quietly
from protoseg.napari.widgets.slide_info import slide_meta

#: protoseg's Shapes layer outlining the member a thumbnail click went to (``metadata["protoseg"]["role"]``)
MEMBER_BOX_ROLE = "bank-member-box"
MEMBER_BOX_NAME = "bank member (protoseg)"
MEMBER_BOX_COLOUR = "#ffc800"


def member_box_layer(viewer: Any) -> Shapes | None:
    """The Shapes layer protoseg draws bank members' patch boxes in, or None while there is none."""
    for layer in viewer.layers:
        meta = layer.metadata.get("protoseg") if isinstance(layer, Shapes) else None
        if isinstance(meta, dict) and meta.get("role") == MEMBER_BOX_ROLE:
            return layer
    return None


def show_member_box(viewer: Any, slide: Any, box: tuple[int, int, int, int], member_id: str) -> Shapes:
    """Outline a level-0 (x, y, w, h) patch box on ``slide``: in protoseg's box layer, replacing its previous box
    (the layer is made, on the slide's scale and translate, when missing). Public napari API only."""
    x, y, w, h = box
    rect = np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], dtype=np.float64)
    width = max(2.0, max(w, h) / 40.0)  # level-0 px: visible at the zoom go-to-member sets
    meta = {"role": MEMBER_BOX_ROLE, "member_id": member_id, "source": slide_meta(slide)["path"]}  # type: ignore[index]
    layer = member_box_layer(viewer)
    if layer is None:
        layer = Shapes(
            ndim=2,
            name=MEMBER_BOX_NAME,
            scale=tuple(slide.scale[-2:]),
            translate=tuple(slide.translate[-2:]),
            units=tuple(slide.units[-2:]),
            metadata={"protoseg": meta},
        )
        layer = add_layer_quietly(viewer, layer)
    else:
        layer.scale, layer.translate = tuple(slide.scale[-2:]), tuple(slide.translate[-2:])
        layer.metadata = {**layer.metadata, "protoseg": meta}
    layer.data = []
    layer.add_rectangles(rect, edge_width=width, edge_color=MEMBER_BOX_COLOUR, face_color="transparent")
    layer.visible = True
    return layer
