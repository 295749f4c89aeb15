"""Topics map to protocols and devices; anything else is kept as unroutable, never dropped."""

from ingest.mqtt_worker import route, subscriptions
from ingest.pipeline import Channel


def test_native_and_owntracks_topics_name_the_device():
    assert (route("devices/d1/location", b"{}", 0.0).channel,
            route("devices/d1/location", b"{}", 0.0).device_id) == (Channel.NATIVE_MQTT, "d1")
    ot = route("owntracks/alice/d2", b"{}", 0.0)
    assert (ot.channel, ot.device_id, ot.topic) == (Channel.OWNTRACKS_MQTT, "d2",
                                                    "owntracks/alice/d2")


def test_topic_prefix_namespaces_the_system_on_a_shared_broker():
    assert subscriptions("ccs/") == [("ccs/devices/+/location", 1), ("ccs/owntracks/+/+", 1)]
    assert route("ccs/devices/d1/location", b"", 0.0, "ccs/").device_id == "d1"
    assert route("devices/d1/location", b"", 0.0, "ccs/").device_id is None


def test_unroutable_topic_has_no_device_and_is_dead_lettered_later():
    for topic in ("devices//location", "devices/d1/status", "owntracks/a/", "x/y/z"):
        assert route(topic, b"{}", 0.0).device_id is None, topic
