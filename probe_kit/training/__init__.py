"""Training on cached tokens, shared by analyzers and exit heads: leakage-free splits, chunked
batches, one fitting loop, scoring with COCO mAP."""
