"""Exceptions for mistakes an operator can fix. str() of each is the one line to show."""


class InfraError(Exception):
    """Something the operator can fix; the message says what is wrong and how to fix it."""


class SettingsError(InfraError):
    """A bad target name, .env file, image file or DATA_ROOT."""


class SecretsError(InfraError):
    """A missing or malformed secrets file, or a secret value the platform needs."""


class EngineError(InfraError):
    """The Docker engine is unreachable, not a swarm manager, or refused a request."""


class ConvergeError(InfraError):
    """A deploy or stop did not reach its goal in time; the message names the services."""


class FirewallError(InfraError):
    """iptables is missing or not ours to change (not Linux, not root), or a rule failed."""


class AlertsError(InfraError):
    """Alertmanager is not deployed, did not answer, or a receiver did not take an alert."""
