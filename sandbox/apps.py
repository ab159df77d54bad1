from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """The provider sandbox as a Django app, for its ``provider_sandbox`` command: it has
    no models, and the platform's own apps never import it (it is development and test
    tooling, like ``harness``). Installed by the development and test settings, not by the
    production settings."""

    name = "sandbox"
    verbose_name = "Provider sandbox"
