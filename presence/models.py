"""Presence: connections, heartbeats, online/idle/offline (issue to come).

For now the inbox socket records live connections in Redis (see
``notifications.services.connections``); this app will own that state.
"""
