"""The IoT services: broker, provisioning, ingestion, storage, rules, commands, firmware."""
