"""This distribution's release (the wire format's own version is ``version.PROTOCOL_VERSION``)."""

__version__ = "0.1.0"
