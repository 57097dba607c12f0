"""tokcomp checkpoints in other tools: transformers Auto classes, sentence-transformers."""
