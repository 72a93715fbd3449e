"""etagent: effective tool-integrated reasoning agents (ET-Agent)."""
__version__ = "0.1.0"
