"""Simulated phones: a motion and GPS-noise model, fleet provisioning, an MQTT publisher and a
sustained-load benchmark of the ingest pipeline."""
