"""Pass `vocab_trim`: keep only the tokens the served languages use (tokcomp/vocab/)."""

from __future__ import annotations

from typing import Any

from tokcomp.errors import CheckpointError, TokcompError
from tokcomp.passes.base import Pass, register_pass
from tokcomp.vocab.config import VocabTrimConfig


@register_pass
class VocabTrimPass(Pass):
    name = "vocab_trim"
    version = 1
    Config = VocabTrimConfig
    summary = "trim the vocabulary (embeddings, head, tokenizer) to the tokens of the served languages"
    # Text models, and speech models whose decoder writes text (Whisper); the recipe refuses it early on images.
    modalities = ("text", "audio")

    def apply(self, model, config: VocabTrimConfig, ctx) -> dict[str, Any]:
        from tokcomp.vocab import trim_vocabulary
        from tokcomp.vocab.vocab_map import save_vocab_map

        loaded = getattr(ctx, "loaded", None)
        if loaded is not None and loaded.input_spec.modality not in self.modalities:
            raise TokcompError(
                f"vocab_trim applies to text / audio models; {loaded.source} is a model for {loaded.input_spec.modality}",
                hint="remove the vocab_trim pass, or use a text or speech model (see `tokcomp zoo list`)",
            )
        if loaded is None or loaded.processor is None:
            raise TokcompError(
                "vocab_trim needs the model's tokenizer",
                hint="run it from a recipe (tokcomp compile), or call tokcomp.vocab.trim_vocabulary(model, tokenizer, config)",
            )
        result = trim_vocabulary(model, loaded.processor, config)
        loaded.processor = result.tokenizer
        ctx.file_writers.append(lambda folder: save_vocab_map(folder, result.old_ids, result.old_size))
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            # config.json is written by the checkpoint; the remapped generation settings are written here.
            ctx.file_writers.append(lambda folder: generation.save_pretrained(str(folder)))
        return {
            "vocab_size": int(len(result.old_ids)),
            "original_vocab_size": int(result.old_size),
            "generation_config": generation.to_diff_dict() if generation is not None else None,
            "report": result.report,
        }

    def restore(self, model, config: VocabTrimConfig, metadata: dict[str, Any]) -> None:
        # config.json already describes the trimmed model, so the structure needs no rebuilding.
        rows = model.get_input_embeddings().weight.shape[0]
        if rows != metadata["vocab_size"]:
            raise CheckpointError(
                f"the rebuilt model has {rows} embedding rows but vocab_trim kept {metadata['vocab_size']} tokens",
                hint="config.json and tokcomp.json come from different compiles; re-run tokcomp compile",
            )
        if metadata.get("generation_config") is not None:
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_dict(metadata["generation_config"])
