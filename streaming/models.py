"""Live streaming: ingest, HLS ladder, stream chat (issue to come)."""
