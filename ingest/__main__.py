from ingest.mqtt_worker import main

main()
