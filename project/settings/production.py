"""Production settings: refuse to start with development secrets."""

from django.core.exceptions import ImproperlyConfigured

from project.settings.base import *  # noqa: F403
from project.settings.base import INSTALLED_APPS, SECRET_KEY

if SECRET_KEY.startswith("dev-insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be set in production")
DEBUG = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The provider sandbox pretends to be FCM, APNs, Twilio and Mailgun and signs its callbacks
# with development secrets: production has no use for it and must not start it by mistake.
# Without the app there is no `provider_sandbox` command, `manage.py run_platform` starts
# no sandbox, and a provider left without real credentials fails its sends where they are
# counted, instead of being answered by a fake.
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "sandbox"]

# make run's simulated demo devices (manage.py iot_simulate) publish made-up readings as
# real devices: never beside real ones.
IOT_DEMO_DEVICES = False
