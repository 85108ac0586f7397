"""Loading YOLOS checkpoints, layer access, the model record, FLOPs and timing.

Kept free of imports so the CLI can read ``REFERENCE_NAME`` without importing torch.
"""

REFERENCE_NAME = "reference"  # the small YOLOS shipped inside the package
