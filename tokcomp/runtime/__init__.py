"""Running exported checkpoints without PyTorch models: ONNX Runtime sentence embeddings."""

from tokcomp.runtime.onnx_text import OnnxSentenceEncoder

__all__ = ["OnnxSentenceEncoder"]
