"""What the registry refuses."""


class RegistryError(Exception):
    """A registry operation was refused (bad checkpoint, unknown version, ...)."""


class UnknownVersion(RegistryError):
    """No complete version of that name exists."""
