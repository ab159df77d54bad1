"""The plumbing every live feature shares: end-user authentication for sockets (signed
tokens, or the session cookie with the Origin checked), the connection registry in Redis,
one live connection's bounded queue with the slow-client cut-off, and the base websocket
consumer with its heartbeat. It knows end-user ids and tokens, never an app's models: the
apps (notifications, presence, and the real-time subsystems) build on it."""
