"""The PostgreSQL database backend: Django's own, with a faster way to read timestamps
(see base.py)."""
