"""A supervisee's track as a file: GeoJSON, GPX 1.1, CSV or KML 2.2, streamed from the database.

A file always holds the whole period, however many fixes it has. `open_track` reads the period
on a connection of its own (never one of the pool's) in one REPEATABLE READ, READ ONLY
transaction and counts its fixes; the file is then written from server-side cursors in that same
snapshot, `FETCH_ROWS` fixes at a time, so it holds exactly the counted fixes (the number the
audit row records) and the process's memory stays bounded whatever the period's size. GeoJSON and
KML put the track line before the fixes: a first pass over the snapshot reads only coordinates.
`TrackResponse` closes the cursors and the connection when the response ends, however it ends
(sent, client gone, server stopping). A client that stops reading for `IDLE_TIMEOUT_S` loses the
connection (PostgreSQL ends the idle transaction); the download then breaks off, never ending as
a complete-looking file.

GPX carries each fix as a `trkpt` with `ele` and `time`; the horizontal accuracy (metres, the
phone's 68 % radius, not a dilution of precision, so not `hdop`) and the provider go into the
point's `<extensions>` in this project's namespace `urn:ccs:gpx:1`.

KML is plain OGC KML 2.2, which Google Earth, QGIS/GDAL (both its KML and LIBKML drivers) and
ArcGIS read: a Placemark with the track as a LineString, then a Folder with one Placemark per fix
(a Point with the fix's TimeStamp, so Google Earth's time slider plays the track; the fix time as
its name; accuracy, provider, source and device in ExtendedData). Not the Google extension
`gx:Track`: GDAL 3.6's KML driver reads nothing of it, its LIBKML driver only a bare line
without the fixes' times and accuracy. Coordinates are WGS-84 longitude,latitude as in the other
formats.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Generator, Iterable, Iterator
from datetime import datetime
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

import anyio
import psycopg
from psycopg.rows import dict_row
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from alerts.report_docs import csv_cell
from api.errors import TooManyRequests
from store.db import connect_raw
from store.settings import get_settings

ExportFormat = Literal["geojson", "gpx", "csv", "kml"]
GPX_NS = "urn:ccs:gpx:1"
KML_NS = "http://www.opengis.net/kml/2.2"
MEDIA_TYPES: dict[str, str] = {
    "geojson": "application/geo+json",
    "gpx": "application/gpx+xml",
    "csv": "text/csv; charset=utf-8",
    "kml": "application/vnd.google-earth.kml+xml",
}
CSV_COLUMNS = ("fix_time", "lon", "lat", "accuracy", "altitude", "speed", "heading", "battery",
               "provider", "source", "mock", "late", "membership", "device_id", "received_at")
POSITION_COLUMNS = """device_id, fix_time, received_at, lon, lat, raw_lon, raw_lat, crs, accuracy,
    altitude, speed, heading, battery, provider, source, mock, seq, late, membership"""
KML_DATA = ("accuracy", "provider", "source", "device_id")
FETCH_ROWS = 2000  # fixes per round trip of a server-side cursor
FLUSH_CHARS = 64 * 1024  # the response is sent in pieces of about this size
IDLE_TIMEOUT_S = 300
EXPORT_APPLICATION = "ccs-track-export"  # application_name of the export's connection
_PERIOD = "supervisee_id = %(s)s AND fix_time >= %(a)s AND fix_time < %(b)s"
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Not characters of XML 1.0: a phone's provider string could hold them; written as U+FFFD.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def iso_times(fix: dict[str, Any]) -> dict[str, Any]:
    """A fix with its times as ISO 8601 text."""
    for k in ("fix_time", "received_at"):
        fix[k] = fix[k].isoformat()
    return fix


def point_feature(p: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [p["lon"], p["lat"]]},
            "properties": p}


class _Slots:
    """At most `exports_max_concurrent` exports at once in this process: each holds a database
    connection of its own for as long as the download lasts, and a burst of large downloads
    would otherwise take every connection PostgreSQL allows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0

    def take(self) -> None:
        limit = get_settings().exports_max_concurrent
        with self.lock:
            if self.used >= limit:
                raise TooManyRequests(
                    f"{limit} track exports are running on this server; try again shortly",
                    "exports_busy", headers={"Retry-After": "30"}, extra={"limit": limit})
            self.used += 1

    def give(self) -> None:
        with self.lock:
            self.used -= 1


SLOTS = _Slots()


class TrackExport:
    """One period's fixes, read in one snapshot on a connection of its own; `close()` ends it
    (and frees its place among the exports running at once)."""

    def __init__(self, supervisee_id: int, start: datetime, end: datetime) -> None:
        self.params = {"s": supervisee_id, "a": start, "b": end}
        SLOTS.take()
        self.closed = False
        try:
            self.conn: psycopg.Connection[Any] = connect_raw(
                application_name=EXPORT_APPLICATION,
                options=f"-c TimeZone=UTC -c idle_in_transaction_session_timeout={IDLE_TIMEOUT_S}s")
        except BaseException:
            SLOTS.give()
            raise
        try:
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
            row = self.conn.execute(f"SELECT count(*) FROM positions WHERE {_PERIOD}",
                                    self.params).fetchone()
        except BaseException:
            self.close()
            raise
        self.total: int = row[0] if row else 0

    def _rows(self, name: str, columns: str, factory: Any) -> Iterator[Any]:
        with self.conn.cursor(name, row_factory=factory) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(f"SELECT {columns} FROM positions WHERE {_PERIOD} "
                        "ORDER BY fix_time, device_id", self.params)
            yield from cur

    def coordinates(self) -> Iterator[tuple[float, float]]:
        """(lon, lat) of every fix in time order."""
        return self._rows("track_line", "lon, lat", psycopg.rows.tuple_row)

    def fixes(self) -> Iterator[dict[str, Any]]:
        """Every fix in time order, its times as ISO 8601 text."""
        return map(iso_times, self._rows("track_fixes", POSITION_COLUMNS, dict_row))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.conn.close()
        finally:
            SLOTS.give()


def open_track(supervisee_id: int, start: datetime, end: datetime) -> TrackExport:
    """Start reading [start, end) of one person's fixes: the snapshot is taken and counted now."""
    return TrackExport(supervisee_id, start, end)


def _num(v: Any) -> str:
    return "" if v is None else repr(float(v))


def _xml(v: Any) -> str:
    """Text for an XML element: escaped, characters XML cannot hold replaced by U+FFFD."""
    return escape(_NOT_XML.sub("\ufffd", str(v)))


def gpx_chunks(points: Iterable[dict[str, Any]], name: str) -> Iterator[str]:
    yield ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<gpx version="1.1" creator="ccs" xmlns="http://www.topografix.com/GPX/1/1" '
           f'xmlns:ccs="{GPX_NS}">\n')
    yield f"<trk><name>{_xml(name)}</name><trkseg>\n"
    for p in points:
        ele = f"<ele>{_num(p['altitude'])}</ele>" if p["altitude"] is not None else ""
        ext = "".join(f"<ccs:{k}>{_xml(p[k])}</ccs:{k}>"
                      for k in ("accuracy", "provider", "source") if p[k] is not None)
        yield (f'<trkpt lat={quoteattr(_num(p["lat"]))} lon={quoteattr(_num(p["lon"]))}>'
               f"{ele}<time>{_xml(p['fix_time'])}</time>"
               f"{f'<extensions>{ext}</extensions>' if ext else ''}</trkpt>\n")
    yield "</trkseg></trk>\n</gpx>\n"


def kml_chunks(line: Iterable[tuple[float, float]] | None, points: Iterable[dict[str, Any]],
               name: str) -> Iterator[str]:
    yield ('<?xml version="1.0" encoding="UTF-8"?>\n'
           f'<kml xmlns="{KML_NS}"><Document><name>{_xml(name)}</name>\n'
           '<Style id="track"><LineStyle><color>ff794e1f</color><width>3</width></LineStyle></Style>\n'
           '<Style id="fix"><IconStyle><scale>0.5</scale></IconStyle>'
           '<LabelStyle><scale>0</scale></LabelStyle></Style>\n')
    if line is not None:
        yield (f'<Placemark id="track"><name>{_xml(name)}</name><styleUrl>#track</styleUrl>'
               "<LineString><tessellate>1</tessellate><coordinates>\n")
        for lon, lat in line:
            yield f"{_num(lon)},{_num(lat)}\n"
        yield "</coordinates></LineString></Placemark>\n"
    yield "<Folder><name>fixes</name>\n"
    for p in points:
        data = "".join(f'<Data name="{k}"><value>{_xml(p[k])}</value></Data>'
                       for k in KML_DATA if p[k] is not None)
        yield (f"<Placemark><name>{_xml(p['fix_time'])}</name>"
               f"<TimeStamp><when>{_xml(p['fix_time'])}</when></TimeStamp><styleUrl>#fix</styleUrl>"
               f"<ExtendedData>{data}</ExtendedData>"
               f"<Point><coordinates>{_num(p['lon'])},{_num(p['lat'])}</coordinates></Point>"
               "</Placemark>\n")
    yield "</Folder></Document></kml>\n"


def csv_chunks(points: Iterable[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for p in points:
        w.writerow([csv_cell(p[c]) for c in CSV_COLUMNS])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def geojson_chunks(line: Iterable[tuple[float, float]] | None, points: Iterable[dict[str, Any]],
                   supervisee_id: int) -> Iterator[str]:
    yield '{"type":"FeatureCollection","crs_note":"WGS-84 (EPSG:4326)","features":['
    sep = ""
    if line is not None:
        yield '{"type":"Feature","geometry":{"type":"LineString","coordinates":['
        for i, (lon, lat) in enumerate(line):
            yield f"{',' if i else ''}[{_num(lon)},{_num(lat)}]"
        yield f']}},"properties":{{"kind":"track","supervisee_id":{supervisee_id}}}}}'
        sep = ","
    for p in points:
        yield sep + _json(point_feature(p))
        sep = ","
    yield "]}\n"


def file_chunks(fmt: ExportFormat, track: TrackExport, name: str,
                supervisee_id: int) -> Generator[bytes, None, None]:
    """The file as pieces of about `FLUSH_CHARS` (one thread-pool hop each, not one per fix)."""
    if fmt == "gpx":
        parts = gpx_chunks(track.fixes(), name)
    elif fmt == "csv":
        parts = csv_chunks(track.fixes())
    else:
        line = track.coordinates() if track.total >= 2 else None
        parts = (kml_chunks(line, track.fixes(), name) if fmt == "kml"
                 else geojson_chunks(line, track.fixes(), supervisee_id))
    buf: list[str] = []
    size = 0
    for part in parts:
        buf.append(part)
        size += len(part)
        if size >= FLUSH_CHARS:
            yield "".join(buf).encode()
            buf.clear()
            size = 0
    yield "".join(buf).encode()


class TrackResponse(StreamingResponse):
    """A track file streamed from `track`, whose cursors and connection are closed when the
    response ends: sent, abandoned by the client, or cancelled (not left to the garbage
    collector, which is when Starlette would otherwise close an unfinished iterator)."""

    def __init__(self, track: TrackExport, fmt: ExportFormat, name: str, supervisee_id: int,
                 headers: dict[str, str]) -> None:
        self.track = track
        self.chunks = file_chunks(fmt, track, name, supervisee_id)
        super().__init__(self.chunks, media_type=MEDIA_TYPES[fmt], headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        try:
            self.chunks.close()  # and with it the passes and the cursor one has open
        finally:
            self.track.close()
