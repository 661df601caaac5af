"""Benchmark: how long opening a slide blocks napari's GUI thread, and when the picture is exact.

Interleaved per round, for each slide (the real ones in ../shared/data/slides by default):
* ``napari baseline``  napari's own ``add_image`` of an in-memory multiscale array of the same level shapes
  (what layer creation and the first draw cost with no I/O at all)
* ``plain arrays``     protoseg's reader with the slide's blocking level arrays (the previous design)
* ``progressive``      protoseg's reader as shipped (placeholders at once, chunks loaded in the background)

A 10 ms QTimer heartbeat measures the longest GUI-thread gap from the open until 1.5 s later (median and max
over rounds, after one warm-up open so GL set-up and first imports are not counted). For "progressive" the
time until every on-screen chunk is loaded and refreshed is reported too. Needs a display (xvfb-run):

    xvfb-run -a -s "-screen 0 1366x768x24" python benchmarks/napari_open.py [--rounds 5] [SLIDE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    slides = args.slides or sorted(p for p in SLIDES.glob("*") if p.suffix in (".svs", ".tif", ".tiff"))
    if not slides:
        raise SystemExit(f"no slides given and none in {SLIDES}")

    import napari

    import protoseg.napari.reader as reader
    from protoseg.napari.refresh import wait_slide_layers
    from protoseg.slide import open_slide
    from widget_support import Heartbeat, settle

    shipped = reader.progressive_pyramid

    def plain(slide):
        return [a for a, _c, _d in slide.pyramid_arrays()]

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1366, 768)
    settle(1.0)
    modes = ("napari baseline", "plain arrays", "progressive")
    viewer.open(str(slides[0]), plugin="protoseg")  # warm-up: GL, shaders, first imports
    wait_slide_layers(viewer, timeout=30.0)
    settle(1.0)
    for path in slides:
        with open_slide(path) as s:
            shapes = [a.shape for a, _c, _d in s.pyramid_arrays()]
        stalls: dict[str, list[float]] = {m: [] for m in modes}
        filled: list[float] = []
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                viewer.layers.clear()
                settle(0.3)
                reader.progressive_pyramid = plain if mode == "plain arrays" else shipped
                beat = Heartbeat()
                beat.reset()
                t0 = time.perf_counter()
                if mode == "napari baseline":
                    levels = [np.full(sh, 200, np.uint8) for sh in shapes]
                    beat.reset()
                    viewer.add_image(levels if len(levels) > 1 else levels[0], rgb=True, contrast_limits=(0, 255))
                else:
                    viewer.open(str(path), plugin="protoseg")
                if mode == "progressive":
                    wait_slide_layers(viewer, timeout=30.0)
                    filled.append(time.perf_counter() - t0)
                settle(1.5)
                stalls[mode].append(beat.longest_ms)
                beat.stop()
        reader.progressive_pyramid = shipped
        print(f"\n{path.name} ({' / '.join(f'{w}x{h}' for h, w, _ in shapes)}), {args.rounds} rounds interleaved")
        for mode in modes:
            v = stalls[mode]
            print(f"  {mode:16s} longest GUI gap: median {statistics.median(v):5.0f} ms, max {max(v):5.0f} ms")
        print(f"  progressive: exact picture after {statistics.median(filled):.2f} s (median; max {max(filled):.2f} s)")
    viewer.close()


if __name__ == "__main__":
    main()
