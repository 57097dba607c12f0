"""Sentence embeddings from a checkpoint's validated ONNX export, on ONNX Runtime.

    encoder = OnnxSentenceEncoder("runs/minilm_tome")     # after `tokcomp export runs/minilm_tome`
    vectors = encoder.encode(["a sentence", "another"])   # [2, 384] float32

Texts are tokenized with the checkpoint's tokenizer and padded to the longest in each
batch (the export has a dynamic sequence axis). The graph returns the output tokens and
`token_weights` (input tokens each stands for, 0 for padding), pooled exactly as
`tokcomp.pooling.pool` pools PyTorch's outputs; pooling and normalisation are the
checkpoint's own (its sentence-transformers files, else tokcomp.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokcomp.errors import CheckpointError
from tokcomp.pooling import pool

WEIGHTS_OUTPUT = "token_weights"


class OnnxSentenceEncoder:
    def __init__(self, folder: str | Path, file: str = "model.onnx", threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from tokcomp.checkpoint import read_state
        from tokcomp.integrations.st_files import sentence_pooling

        self.folder = Path(folder)
        state = read_state(self.folder)
        entry = next((e for e in state.exports if e.get("file") == file), None)
        if entry is None or not (self.folder / file).is_file():
            raise CheckpointError(
                f"{self.folder} has no ONNX export {file}", hint=f"run `tokcomp export {self.folder} --format onnx`"
            )
        if "sequence_length" not in entry.get("dynamic_axes", {}):
            raise CheckpointError(
                f"{self.folder / file} was exported at a fixed sequence length",
                hint=f"export again with this tokcomp: `tokcomp export {self.folder} --format onnx --force`",
            )
        self.pooling, self.normalize = sentence_pooling(self.folder) or (state.base.pooling, False)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.max_length = _max_length(self.folder, entry, self.tokenizer)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """[len(texts), D] float32 sentence embeddings."""
        out = [self._batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feeds = {name: batch[name].astype(np.int64) for name in self.input_names if name in batch}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        tokens, weights = self.session.run(["last_hidden_state", WEIGHTS_OUTPUT], feeds)
        pooled = pool(torch.from_numpy(tokens), torch.from_numpy(weights), self.pooling, self.normalize)
        return pooled.numpy().astype(np.float32)


def _max_length(folder: Path, entry: dict, tokenizer) -> int:
    """Truncation length: sentence-transformers' max_seq_length when the folder has one (what
    SentenceTransformer.encode truncates to), else the export's maximum."""
    from tokcomp.fileio import read_json

    config = folder / "sentence_bert_config.json"
    if config.is_file() and read_json(config).get("max_seq_length"):
        return int(read_json(config)["max_seq_length"])
    return int(entry.get("max_sequence_length") or tokenizer.model_max_length)
