"""Services: every write of the notification pipeline, called by views, tasks, consumers,
commands and admin actions alike (docs/architecture.md, "Layers")."""
