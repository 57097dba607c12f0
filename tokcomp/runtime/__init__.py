"""Running exported checkpoints without PyTorch models: ONNX Runtime sentence embeddings and Whisper transcription."""

from tokcomp.runtime.onnx_text import OnnxSentenceEncoder
from tokcomp.runtime.onnx_whisper import OnnxWhisper, transcribe_onnx

__all__ = ["OnnxSentenceEncoder", "OnnxWhisper", "transcribe_onnx"]
