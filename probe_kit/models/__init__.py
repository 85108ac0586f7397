"""Loading YOLOS checkpoints, layer access, the model record, FLOPs and timing.

Kept free of imports so the CLI can read ``REFERENCE_NAME`` without importing torch.
"""

REFERENCE_NAME = "reference"  # the small YOLOS shipped inside the package
SHALLOW_REFERENCE_NAME = "shallow-reference"  # its recipe at half the depth: the smaller model trained on its own
# embedded model name -> its folder under probe_kit/reference/
EMBEDDED_MODELS = {REFERENCE_NAME: "weights", SHALLOW_REFERENCE_NAME: "shallow"}
