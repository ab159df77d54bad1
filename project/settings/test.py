"""Test settings: the same real services, faster hashing, quieter logs."""

from project.settings.base import *  # noqa: F403
from project.settings.env import env_str

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOG_LEVEL = env_str("LOG_LEVEL", "WARNING")
LOGGING["root"]["level"] = LOG_LEVEL  # type: ignore[index]  # noqa: F405
