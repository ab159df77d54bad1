"""Settings package: ``project.settings`` is the local/production default.

``DJANGO_SETTINGS_MODULE=project.settings.test`` selects the test settings and
``project.settings.production`` adds the hardening a public deployment needs.
"""

from project.settings.base import *  # noqa: F403
