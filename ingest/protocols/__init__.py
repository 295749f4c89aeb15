"""Phone protocols, one module each (like Traccar's `protocol/` package): raw bytes or parameters
in, validated `Fix` objects out.

Pure: no I/O, no database, no clock (`now` is passed in). Every decoder either returns a
`Decoded` or raises `DecodeError`; nothing else escapes, whatever the input bytes.

* `native.decode_native`          our own MQTT payload on `devices/{device_id}/location`
* `owntracks.decode_owntracks`    OwnTracks JSON, over MQTT or HTTP
* `osmand.decode_osmand_query`    the OsmAnd protocol as query/form parameters (classic Traccar
  Client)
* `osmand.decode_osmand_json`     the OsmAnd JSON body sent by Traccar Client 9+

`common` holds what they share: the result types, the reason codes and the one set of
plausibility rules (see docs/protocols.md).
"""

from ingest.protocols.common import KMH_MS, KNOT_MS, REASONS, Decoded, DecodeError, Limits
from ingest.protocols.native import decode_native
from ingest.protocols.osmand import HDOP_UERE_M, decode_osmand_json, decode_osmand_query
from ingest.protocols.owntracks import decode_owntracks

__all__ = [
    "HDOP_UERE_M",
    "KMH_MS",
    "KNOT_MS",
    "REASONS",
    "DecodeError",
    "Decoded",
    "Limits",
    "decode_native",
    "decode_osmand_json",
    "decode_osmand_query",
    "decode_owntracks",
]
