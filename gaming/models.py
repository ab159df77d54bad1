"""Gaming: matchmaking and authoritative match servers (issue to come)."""
