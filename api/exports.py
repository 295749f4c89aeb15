"""A supervisee's track as a file: GeoJSON, GPX 1.1 or CSV, written as a stream of chunks.

GPX carries each fix as a `trkpt` with `ele` and `time`; the horizontal accuracy (metres, the
phone's 68 % radius, not a dilution of precision, so not `hdop`) and the provider go into the
point's `<extensions>` in this project's namespace `urn:ccs:gpx:1`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

ExportFormat = Literal["geojson", "gpx", "csv"]
GPX_NS = "urn:ccs:gpx:1"
MEDIA_TYPES: dict[str, str] = {
    "geojson": "application/geo+json",
    "gpx": "application/gpx+xml",
    "csv": "text/csv; charset=utf-8",
}
CSV_COLUMNS = ("fix_time", "lon", "lat", "accuracy", "altitude", "speed", "heading", "battery",
               "provider", "source", "mock", "late", "membership", "device_id", "received_at")


def _num(v: Any) -> str:
    return "" if v is None else repr(float(v))


def gpx_chunks(points: list[dict[str, Any]], name: str) -> Iterator[str]:
    yield ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<gpx version="1.1" creator="ccs" xmlns="http://www.topografix.com/GPX/1/1" '
           f'xmlns:ccs="{GPX_NS}">\n')
    yield f"<trk><name>{escape(name)}</name><trkseg>\n"
    for p in points:
        ele = f"<ele>{_num(p['altitude'])}</ele>" if p["altitude"] is not None else ""
        ext = "".join(f"<ccs:{k}>{escape(str(p[k]))}</ccs:{k}>"
                      for k in ("accuracy", "provider", "source") if p[k] is not None)
        yield (f'<trkpt lat={quoteattr(_num(p["lat"]))} lon={quoteattr(_num(p["lon"]))}>'
               f"{ele}<time>{escape(p['fix_time'])}</time>"
               f"{f'<extensions>{ext}</extensions>' if ext else ''}</trkpt>\n")
    yield "</trkseg></trk>\n</gpx>\n"


def csv_chunks(points: list[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for i, p in enumerate(points, 1):
        w.writerow(["" if p[c] is None else p[c] for c in CSV_COLUMNS])
        if i % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def point_feature(p: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [p["lon"], p["lat"]]},
            "properties": p}


def geojson_chunks(features: list[dict[str, Any]]) -> Iterator[str]:
    yield '{"type":"FeatureCollection","crs_note":"WGS-84 (EPSG:4326)","features":['
    for i, f in enumerate(features):
        yield ("," if i else "") + json.dumps(f, ensure_ascii=False, separators=(",", ":"))
    yield "]}\n"


def chunks(fmt: ExportFormat, features: list[dict[str, Any]], points: list[dict[str, Any]],
           name: str) -> Iterator[str]:
    if fmt == "gpx":
        return gpx_chunks(points, name)
    if fmt == "csv":
        return csv_chunks(points)
    return geojson_chunks(features)
