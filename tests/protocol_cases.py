"""What the protocol tests share: the clock, the canonical message of each protocol (as its app
documents it) and runners that apply overrides to it. Each protocol's tests are in
`test_protocol_{native,owntracks,osmand}.py`; the rules every protocol shares in
`test_protocol_common.py`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st

from geofence.model import Fix, Source
from ingest.protocols import (
    Decoded,
    DecodeError,
    Limits,
    decode_native,
    decode_osmand_json,
    decode_osmand_query,
    decode_owntracks,
)

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
T = NOW - 60.0  # a fix one minute old: 2025-06-15T15:05:40Z
T_ISO = "2025-06-15T15:05:40Z"
DEVICE = "dev-1"
REMOVE: Any = object()  # override value meaning "drop this key"
LIMITS = Limits()


def override(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is REMOVE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def error(fn: Callable[[], Decoded]) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        fn()
    return info.value


# ------------------------------------------------------------------------------ native MQTT

NATIVE: dict[str, Any] = {
    "time": T,
    "lat": 31.2304,
    "lon": 121.4737,
    "accuracy": 12.5,
    "altitude": 4.0,
    "speed": 1.5,
    "heading": 270.0,
    "battery": 81.0,
    "crs": "gcj02",
    "provider": "fused",
    "mock": True,
    "seq": 42,
}


def native(**overrides: Any) -> dict[str, Any]:
    return override(NATIVE, overrides)


def run_native(doc: Any, limits: Limits = LIMITS) -> Decoded:
    return decode_native(DEVICE, dumps(doc), NOW, limits)


def native_error(doc: Any, limits: Limits = LIMITS) -> DecodeError:
    return error(lambda: run_native(doc, limits))


def native_fix(**overrides: Any) -> Fix:
    (fix,) = run_native(native(**overrides)).fixes
    return fix


# ------------------------------------------------------------------------------ OwnTracks

OWNTRACKS: dict[str, Any] = {
    "_type": "location",
    "lat": 48.8566,
    "lon": 2.3522,
    "tst": int(T),
    "acc": 15,
    "alt": 35,
    "vel": 36,
    "cog": 90,
    "batt": 77,
    "bs": 1,
    "tid": "ab",
    "t": "u",
    "m": 1,
    "conn": "w",
    "topic": "owntracks/jane/dev-1",
    "inregions": ["home"],
}


def owntracks(**overrides: Any) -> dict[str, Any]:
    return override(OWNTRACKS, overrides)


def run_owntracks(doc: Any, source: Source = Source.OWNTRACKS_MQTT) -> Decoded:
    return decode_owntracks(DEVICE, dumps(doc), NOW, Limits(), source)


def owntracks_error(doc: Any) -> DecodeError:
    return error(lambda: run_owntracks(doc))


# ------------------------------------------------------------------------------ OsmAnd query

OSMAND: dict[str, str] = {
    "id": "48241179",
    "timestamp": str(int(T)),
    "lat": "31.2304",
    "lon": "121.4737",
    "speed": "10.0",
    "bearing": "45.5",
    "altitude": "12.0",
    "accuracy": "8.0",
    "batt": "64.0",
    "charge": "false",
}


def osmand(**overrides: Any) -> dict[str, str]:
    return override(OSMAND, overrides)


def run_osmand(params: dict[str, str], limits: Limits = LIMITS) -> Decoded:
    return decode_osmand_query(params, NOW, limits)


def osmand_error(params: dict[str, str], limits: Limits = LIMITS) -> DecodeError:
    return error(lambda: run_osmand(params, limits))


def osmand_fix(**overrides: Any) -> Fix:
    (fix,) = run_osmand(osmand(**overrides)).fixes
    return fix


# ------------------------------------------------------------------------------ OsmAnd JSON

# Exactly what Traccar Client 9 posts (its locationTemplate, plus the device_id http param).
TRACCAR: dict[str, Any] = {
    "location": {
        "timestamp": "2025-06-15T15:05:40.000Z",
        "coords": {
            "latitude": 31.2304,
            "longitude": 121.4737,
            "accuracy": 6.5,
            "speed": 2.5,
            "heading": 181.0,
            "altitude": 14.2,
        },
        "is_moving": True,
        "odometer": 1234.5,
        "event": "",
        "battery": {"level": 0.64, "is_charging": False},
        "activity": {"type": "walking"},
        "extras": {},
        "_": "&id=48241179&lat=31.2304&lon=121.4737&timestamp=2025-06-15T15:05:40.000Z&",
    },
    "device_id": "48241179",
}


def traccar(
    coords: dict[str, Any] | None = None,
    /,
    root: dict[str, Any] | None = None,
    **location: Any,
) -> dict[str, Any]:
    """The canonical body; `coords` overrides inside coords, keywords inside location."""
    body = override(TRACCAR, root or {})
    if "location" in body and isinstance(body["location"], dict):
        body["location"] = override(body["location"], location)
        if coords is not None:
            body["location"]["coords"] = override(body["location"]["coords"], coords)
    return body


def run_traccar(doc: Any) -> Decoded:
    return decode_osmand_json(dumps(doc), NOW)


def traccar_error(doc: Any) -> DecodeError:
    return error(lambda: run_traccar(doc))


def traccar_fix(coords: dict[str, Any] | None = None, /, **location: Any) -> Fix:
    (fix,) = run_traccar(traccar(coords, **location)).fixes
    return fix


# Every JSON type a field can hold, with values near each rule's bounds.
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 1, -1, 90, 360]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(
        [0.0, -0.0, 1e-31, -1e-31, 1e-300, 90.0, 90.5, 180.0, 1e6, 1e6 + 1, 1e5, -1.2e4]),
    st.text(max_size=70), st.sampled_from(["wgs84", "GCJ02", "gcj02", "bd09", "", "gps", "\x00"]),
    st.lists(st.integers(-9, 9), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(-9, 9),
                                                                max_size=1),
)


def decode_or_error(decode: Callable[[str, bytes, float], Any], obj: Any) -> Any:
    """A decoder's result on `obj`, or its refusal as (reason, detail): two ways of decoding
    compare equal exactly when they give the same fix or the same error."""
    try:
        return decode(DEVICE, dumps(obj), NOW)
    except DecodeError as e:
        return (e.reason, e.detail)


def fast_path_and_model(decode: Callable[[str, bytes, float], Any], module: Any, obj: Any
                        ) -> tuple[Any, Any]:
    """A decoder's result on `obj` (or its refusal) as it runs, and with its fast path
    (`module._plain`) turned off so that its pydantic model decides everything."""
    fast = decode_or_error(decode, obj)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "_plain", lambda _obj: None)
        return fast, decode_or_error(decode, obj)
