"""The MQTT topic filters the ingest worker reads, in one place: its subscriptions
(ingest/mqtt_worker.py) and both broker ACLs (store/broker_sync.py for Mosquitto,
api/routes/broker.py for the EMQX hook) are made from this list.

OwnTracks publishes locations on its base topic `owntracks/{user}/{device}`, and under it
transitions on `.../event`, a region set up on the phone on `.../waypoint` and an exported list of
regions on `.../waypoints` (https://owntracks.org/booklet/tech/json/, "Topics").
"""

from __future__ import annotations

OWNTRACKS_SUBTOPICS = ("event", "waypoint", "waypoints")


def ingest_filters(prefix: str) -> list[str]:
    """Every topic filter of the phones' reports, under the deployment's topic prefix."""
    return [f"{prefix}devices/+/location", f"{prefix}owntracks/+/+",
            *(f"{prefix}owntracks/+/+/{sub}" for sub in OWNTRACKS_SUBTOPICS)]
