"""`SentenceTransformer(out, trust_remote_code=True)` on a token-reduced checkpoint: module 0 of its modules.json.

`TokcompTransformer` runs the compressed model from `tokcomp.load` and hands the Pooling
module, as its attention mask, the number of input tokens each output token stands for
(0 for padding rows): sentence-transformers' mean pooling then equals mean pooling over
the input tokens, and its CLS pooling reads the CLS token (always kept, always first).
Normalize and the other modules are sentence-transformers' own. The files are written at
compile time by `tokcomp.integrations.st_files`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sentence_transformers.base.modules import InputModule
from torch import Tensor

from tokcomp.errors import CheckpointError
from tokcomp.pooling import run_with_token_weights

# Where forward keeps the input's attention mask once it has replaced "attention_mask" by token sizes.
INPUT_MASK = "input_attention_mask"


class TokcompTransformer(InputModule):
    """sentence-transformers input module around a tokcomp checkpoint."""

    config_file_name = "sentence_bert_config.json"
    config_keys = ["max_seq_length", "do_lower_case"]
    save_in_root = True

    def __init__(self, folder: str | Path, max_seq_length: int | None = None, do_lower_case: bool = False):
        from transformers import AutoTokenizer

        from tokcomp.checkpoint import load

        super().__init__()
        self.folder = Path(folder)
        self.model = load(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_seq_length = max_seq_length or min(positions, self.tokenizer.model_max_length)
        self.do_lower_case = do_lower_case

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> TokcompTransformer:
        folder = Path(model_name_or_path) / subfolder
        if not folder.is_dir():
            raise CheckpointError(
                f"{model_name_or_path} is not a local folder",
                hint="download the checkpoint folder first; tokcomp checkpoints load from disk",
            )
        config = cls.load_config(str(folder))
        return cls(folder, **{key: value for key, value in config.items() if key in cls.config_keys})

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
        texts = [prompt + text if prompt else text for text in inputs]
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        batch = self.tokenizer(
            texts, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt"
        )
        return dict(batch)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
        mask = inputs.get("attention_mask")
        if mask is not None and mask.shape != inputs["input_ids"].shape and INPUT_MASK in features:
            # the dict has been through forward: its attention mask is the output's, the input's is kept beside it
            inputs["attention_mask"] = features[INPUT_MASK]
        outputs, weights = run_with_token_weights(self.model, **inputs)
        tokens = outputs.last_hidden_state
        features["token_embeddings"] = tokens
        # Pooling weighs tokens by the attention mask: sizes make its mean the mean over input tokens.
        # The input's own mask is kept beside it, so the same dict can be encoded again.
        if "attention_mask" in inputs:
            features[INPUT_MASK] = inputs["attention_mask"]
        features["attention_mask"] = weights.to(tokens.dtype)
        features["cls_token_embeddings"] = tokens[:, 0]
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    get_word_embedding_dimension = get_embedding_dimension

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the checkpoint (weights, tokcomp.json, config, tokenizer) into `output_path`."""
        import safetensors.torch

        from tokcomp.checkpoint import STATE_FILE, WEIGHTS_FILE
        from tokcomp.integrations.hf_auto import SHIM_FILE

        out = Path(output_path)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.folder.resolve():
            for name in (STATE_FILE, "config.json", SHIM_FILE):
                if (self.folder / name).is_file():
                    shutil.copyfile(self.folder / name, out / name)
            safetensors.torch.save_model(self.model, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(str(out))
        self.save_config(str(out))
