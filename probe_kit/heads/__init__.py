"""Multi-exit heads: training on cached tokens, adaptive inference, evaluation."""
