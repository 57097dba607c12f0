"""The `vocab_trim` pass configuration: corpus, languages, selection rule, checks.

    - type: vocab_trim
      languages: [de, fr]                 # union of per-language keep sets
      corpus: [zoo:wordfreq, zoo:chatterbot, {source: my.jsonl, field: text, language: de}]
      rule: {coverage: 0.999}             # or {top_n: 32000}, or {min_freq: 2}
      keep_tokens: ["<start_of_turn>"]
      checks: {held_out: [zoo:chatterbot], generate_prompts: 20}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from tokcomp.passes.base import PassConfig, StrictModel

ZOO_SOURCES = ("zoo:wordfreq", "zoo:chatterbot", "zoo:pydocs")


def _source_shorthand(value):
    return {"source": value} if isinstance(value, str) else value


class CorpusEntry(StrictModel):
    source: str = Field(
        description=(
            "zoo:wordfreq | zoo:chatterbot | zoo:pydocs (English prose) | a .txt file (one text per line) | "
            "a .jsonl file | a folder written by datasets' save_to_disk; zoo sources may name a language: "
            "zoo:wordfreq:de"
        )
    )
    language: str | None = Field(
        default=None, description="the language group this entry counts for; default: the pass's languages"
    )
    field: str = Field(default="text", description="the text field of .jsonl records and data set rows")
    limit: int | None = Field(default=None, gt=0, description="at most this many texts (words for zoo:wordfreq)")

    @field_validator("source")
    @classmethod
    def _known_zoo_source(cls, value: str) -> str:
        if value.startswith("zoo:") and not any(value == z or value.startswith(z + ":") for z in ZOO_SOURCES):
            raise ValueError(f"unknown built-in corpus {value!r}; valid: {', '.join(ZOO_SOURCES)} (optionally :<language>)")
        return value


Entry = Annotated[CorpusEntry, BeforeValidator(_source_shorthand)]


class SelectionRule(StrictModel):
    """Which counted tokens to keep, per language. min_freq applies first, then top_n or coverage."""

    min_freq: float = Field(default=1, gt=0, description="drop tokens counted fewer times than this")
    top_n: int | None = Field(default=None, gt=0, description="keep only the N most frequent tokens")
    coverage: float | None = Field(
        default=None, gt=0, le=1, description="keep the fewest tokens that cover this share of corpus tokens"
    )

    @model_validator(mode="after")
    def _one_cap(self):
        if self.top_n is not None and self.coverage is not None:
            raise ValueError("rule takes top_n or coverage, not both")
        return self


class WordListSettings(StrictModel):
    """How zoo:wordfreq word lists become token counts (see tokcomp/vocab/wordlists.py)."""

    words: int = Field(default=50_000, gt=0, description="the most frequent words per language")
    scale: float = Field(
        default=1e8, gt=0, description="counts are frequencies times this: occurrences in a notional corpus of that many words"
    )
    variants: bool = Field(default=True, description="also count capitalised, upper-case and punctuated forms")


class CheckSettings(StrictModel):
    held_out: list[Entry] | None = Field(
        default=None,
        description="in-language text never counted; default: every 10th text of the corpus's sentence sources",
    )
    off_target: list[Entry] | None = Field(
        default=None, description="text in another script; default: chatterbot Russian (Chinese when targeting Russian)"
    )
    max_texts: int = Field(default=2000, gt=0, description="at most this many held-out / off-target texts")
    logits_texts: int = Field(default=12, ge=0, description="held-out texts whose logits are compared")
    max_length: int = Field(default=64, gt=1, description="tokens per text in the logits and generation checks")
    logits_atol: float = Field(default=1e-5, ge=0, description="largest allowed |logit difference| on kept tokens")
    generate_prompts: int = Field(default=20, ge=0, description="prompts for the greedy-generation check (decoders)")
    max_new_tokens: int = Field(default=16, gt=0)
    min_coverage: float | None = Field(
        default=None, gt=0, le=1, description="fail the compile when held-out token coverage is below this"
    )


class VocabTrimConfig(PassConfig):
    languages: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the languages served")
    corpus: list[Entry] = Field(min_length=1)
    rule: SelectionRule = SelectionRule()
    keep_tokens: list[str] = Field(default_factory=list, description="extra tokens to keep (their strings)")
    keep_symbols: bool = Field(
        default=True,
        description="keep every token made only of ASCII digits, punctuation and whitespace (language-neutral)",
    )
    wordfreq: WordListSettings = WordListSettings()
    checks: CheckSettings = CheckSettings()

    @model_validator(mode="after")
    def _no_block_selection(self):
        # targets / ignore come from PassConfig and select transformer blocks, which this pass never touches.
        if self.targets is not None or self.ignore:
            raise ValueError("vocab_trim does not select blocks: remove targets / ignore")
        return self

    @model_validator(mode="after")
    def _languages_for_zoo_sources(self):
        entries = list(self.corpus) + list(self.checks.held_out or []) + list(self.checks.off_target or [])
        for entry in entries:
            per_language = entry.source in ("zoo:wordfreq", "zoo:chatterbot")
            if per_language and not entry.language and not self.languages:
                raise ValueError(f"{entry.source} needs a language: set `languages` or write {entry.source}:<code>")
        return self
