"""IoT: MQTT ingestion, time series, rules and alerts (issue to come)."""
