"""probe_kit: measure whether the intermediate layers of a YOLOS detector can support detection."""

__version__ = "0.1.0"
