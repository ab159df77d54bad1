"""Production settings: refuse to start with development secrets."""

from django.core.exceptions import ImproperlyConfigured

from project.settings.base import *  # noqa: F403
from project.settings.base import SECRET_KEY

if SECRET_KEY.startswith("dev-insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be set in production")
DEBUG = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
