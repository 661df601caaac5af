"""``protoseg export``: a batch prediction (OME-Zarr) as OME-Zarr copy, OME-TIFF mask, GeoJSON or area table."""

from __future__ import annotations

import argparse

from protoseg.cli.args import float_in
from protoseg.config_ranges import MIN_AREA_UM2, SIMPLIFY_UM


def register(subparsers: argparse._SubParsersAction) -> None:
    from protoseg.export import DEFAULT_MIN_AREA_UM2, DEFAULT_SIMPLIFY_UM, ExportFormat, ObjectType

    e = subparsers.add_parser(
        "export",
        help="export a prediction (OME-Zarr) as OME-TIFF mask, QuPath GeoJSON, area table or OME-Zarr copy",
    )
    e.add_argument("zarr", metavar="ZARR", nargs="?", help="prediction folder written by `protoseg predict`")
    e.add_argument(
        "--corrections",
        metavar="STORE",
        help="export a corrections store (<slide>.corrections.zarr) as QuPath GeoJSON annotations instead",
    )
    e.add_argument(
        "--format",
        "-f",
        choices=[f.value for f in ExportFormat],
        help="geojson: QuPath objects; ome-tiff: class mask pyramid; areas: mm² per class (CSV); ome-zarr: copy",
    )
    e.add_argument("--out", "-o", default=None, help="output file (default: next to ZARR)")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the file --out even if it is not an export protoseg wrote "
        "(an OME-Zarr folder holding files protoseg did not write is never replaced)",
    )
    e.add_argument(
        "--level", type=int, default=None, help="pyramid level to export (default: 0; GeoJSON: finest that fits)"
    )
    e.add_argument(
        "--simplify",
        type=float_in(SIMPLIFY_UM),
        default=DEFAULT_SIMPLIFY_UM,
        metavar="UM",
        help=f"GeoJSON: smooth pixel staircases with this tolerance in µm, 0 = exact pixel outlines "
        f"(default {DEFAULT_SIMPLIFY_UM:g}, at most {SIMPLIFY_UM.high:g})",
    )
    e.add_argument(
        "--min-area",
        type=float_in(MIN_AREA_UM2),
        default=DEFAULT_MIN_AREA_UM2,
        metavar="UM2",
        help=f"GeoJSON: drop objects and fill holes smaller than this many µm², 0 = keep all "
        f"(default {DEFAULT_MIN_AREA_UM2:g}, at most {MIN_AREA_UM2.high:g})",
    )
    e.add_argument(
        "--object-type",
        choices=[t.value for t in ObjectType],
        default=ObjectType.ANNOTATION.value,
        help="GeoJSON: QuPath object type; annotation (editable regions, the default) or detection "
        "(many small read-only objects, faster in QuPath)",
    )
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from protoseg.export import ExportError, export_prediction

    if args.corrections:
        from protoseg.corrections.geojson import corrections_to_geojson

        out = args.out or str(args.corrections).rstrip("/").removesuffix(".zarr") + ".geojson"
        print(corrections_to_geojson(args.corrections, out, args.object_type, overwrite=args.overwrite))
        return 0
    if not args.zarr or not args.format:
        raise ExportError("export needs ZARR and --format (or --corrections STORE); see `protoseg export -h`")
    path = export_prediction(
        args.zarr,
        args.format,
        args.out,
        level=args.level,
        overwrite=args.overwrite,
        simplify_um=args.simplify,
        min_area_um2=args.min_area,
        object_type=args.object_type,
    )
    print(path)
    return 0
