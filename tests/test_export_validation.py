"""compare_outputs separates a wrong artifact from an input PyTorch fp32 cannot decide.

Tiny modules and fake runtimes (`run` callables), no export: fast. The "ill-conditioned"
references are made so on purpose: in float64 only they add 1 to some samples, so
PyTorch fp32 and fp64 disagree there exactly as on a token-merge decision that fp32
rounding flips.
"""

import pytest
import torch
from torch import nn

from tokcomp.export.io_spec import IOSpec
from tokcomp.export.validate import MAX_DRAWS, ExportValidationError, compare_outputs, draw_seed

SPEC = IOSpec("feature-extraction", "image", ("pixel_values",), ("last_hidden_state",), image_size=4, num_channels=1)
TWO_OUTPUTS = IOSpec(
    "feature-extraction",
    "image",
    ("pixel_values",),
    ("last_hidden_state", "pooler_output"),
    image_size=4,
    num_channels=1,
)
OLD_KEYS = {"runtime", "atol", "batch_sizes", "max_abs_diff", "passed"}


class Features(nn.Module):
    """(batch, 1, 4, 4) -> (batch, 16, 2) [+ its mean]; in float64 only, +1 where the first pixel > threshold."""

    float64_calls = 0  # class-level: the float64 copy is a deep copy

    def __init__(self, threshold: float = float("inf"), outputs: int = 1):
        super().__init__()
        self.proj = nn.Linear(1, 2)
        self.threshold = threshold
        self.outputs = outputs

    def forward(self, pixel_values):
        hidden = self.proj(pixel_values.flatten(2).transpose(1, 2))
        if self.proj.weight.dtype == torch.float64:
            type(self).float64_calls += 1
            flipped = pixel_values.flatten(1)[:, 0] > self.threshold
            hidden = hidden + flipped[:, None, None].to(hidden.dtype)
        return (hidden, hidden.mean(1))[: self.outputs]


def runtime(model, offset=0.0, on=lambda x: torch.ones(len(x), dtype=torch.bool)):
    """A fake runtime: the fp32 model's outputs, + `offset` on the samples where `on(pixels)` holds."""

    def run(inputs):
        x = inputs["pixel_values"]
        with torch.inference_mode():
            outputs = model(x)
        mask = on(x).float()
        return [(o + offset * mask.view(-1, *[1] * (o.dim() - 1))).numpy() for o in outputs]

    return run


def first_pixels(batch, attempt):
    return SPEC.dummy_inputs(batch, seed=draw_seed(batch, attempt))["pixel_values"].flatten(1)[:, 0]


def test_clean_model_passes_without_float64_reference():
    model = Features().eval()
    Features.float64_calls = 0
    report = compare_outputs(runtime(model, 3e-5), model, SPEC, runtime="fake")
    assert OLD_KEYS <= set(report) and set(report) - OLD_KEYS == {"set_aside", "seeds"}
    assert report["passed"] and report["set_aside"] == [] and report["batch_sizes"] == [1, 4]
    assert report["atol"] == {"last_hidden_state": 1e-4} and report["runtime"] == "fake"
    assert set(report["max_abs_diff"]) == {"1", "4"}
    for diffs in report["max_abs_diff"].values():
        assert set(diffs) == {"last_hidden_state"} and diffs["last_hidden_state"] == pytest.approx(3e-5, rel=1e-3)
    assert report["seeds"] == {"1": draw_seed(1, 0), "4": draw_seed(4, 0)}
    assert Features.float64_calls == 0  # no mismatch, no float64 copy


def test_well_conditioned_mismatch_fails_with_numbers():
    model = Features().eval()
    on_sample_2 = lambda x: torch.arange(len(x)) == 2  # noqa: E731
    with pytest.raises(ExportValidationError) as excinfo:
        compare_outputs(runtime(model, 1e-2, on_sample_2), model, SPEC, batch_sizes=(4,), runtime="fake")
    message = str(excinfo.value)
    assert message.startswith("fake does not match PyTorch")
    assert "batch 4 last_hidden_state: max |diff| 0.01 > atol 0.0001 on sample(s) [2]" in message
    assert f"seed {draw_seed(4, 0)}" in message and "well-conditioned sample(s) [2]" in message
    assert "ill-conditioned" not in message


def test_ill_conditioned_draw_is_set_aside_and_redrawn():
    # a threshold between the draws' first pixels: some samples of the first draw flip in
    # float64, none of the second does
    first, second = first_pixels(4, 0), first_pixels(4, 1)
    threshold = float(second.max() + first.max()) / 2
    assert second.max() < threshold < first.max()
    flipped = torch.nonzero(first > threshold).flatten().tolist()
    model = Features(threshold).eval()
    near_boundary = lambda x: x.flatten(1)[:, 0] > threshold  # noqa: E731
    report = compare_outputs(runtime(model, 0.5, near_boundary), model, SPEC, batch_sizes=(4,))
    assert report["passed"] and report["seeds"] == {"4": draw_seed(4, 1)}
    assert report["max_abs_diff"]["4"]["last_hidden_state"] < 1e-6  # the accepted draw matches
    [entry] = report["set_aside"]
    assert entry["batch"] == 4 and entry["seed"] == draw_seed(4, 0) and entry["samples"] == flipped
    assert entry["runtime_vs_fp32"]["last_hidden_state"] == pytest.approx([0.5] * len(flipped), rel=1e-5)
    assert entry["fp32_vs_fp64"]["last_hidden_state"] == pytest.approx([1.0] * len(flipped), rel=1e-5)


def test_well_conditioned_sample_in_an_ill_conditioned_draw_still_fails():
    first = first_pixels(4, 0)
    threshold = float(first.sort().values[2])  # the top sample flips in float64
    model = Features(threshold).eval()
    lowest = int(first.argmin())
    wrong_too = lambda x: (x.flatten(1)[:, 0] > threshold) | (torch.arange(len(x)) == lowest)  # noqa: E731
    with pytest.raises(ExportValidationError) as excinfo:
        compare_outputs(runtime(model, 0.5, wrong_too), model, SPEC, batch_sizes=(4,))
    message = str(excinfo.value)
    assert "does not match PyTorch" in message and f"well-conditioned sample(s) [{lowest}]" in message
    assert "max |diff| 0.5 > atol 0.0001" in message


def test_ill_conditioned_on_every_draw_raises():
    model = Features(threshold=-1.0, outputs=2).eval()  # every sample flips in float64
    with pytest.raises(ExportValidationError) as excinfo:
        compare_outputs(runtime(model, 0.5), model, TWO_OUTPUTS, batch_sizes=(1, 4), runtime="fake")
    message = str(excinfo.value)
    assert message.startswith("fake could not be validated: the model is numerically ill-conditioned")
    for batch in (1, 4):
        seeds = ", ".join(str(draw_seed(batch, a)) for a in range(MAX_DRAWS))
        assert f"batch {batch}: all {MAX_DRAWS} draws (seeds {seeds}) set aside" in message
    assert "PyTorch fp32 itself up to last_hidden_state 1, pooler_output 1 away from fp64" in message
    assert "runtime vs fp32 up to last_hidden_state 0.5, pooler_output 0.5" in message
    assert "larger atol" in message and "smoother reducer" in message


class NoFloat64(Features):
    def forward(self, pixel_values):
        if pixel_values.dtype == torch.float64:
            raise NotImplementedError("no float64 kernel for tokcomp::merge")
        return super().forward(pixel_values)


def test_mismatch_is_real_when_the_float64_check_cannot_run():
    model = NoFloat64().eval()
    with pytest.raises(ExportValidationError) as excinfo:
        compare_outputs(runtime(model, 0.5), model, SPEC, batch_sizes=(1,))
    message = str(excinfo.value)
    assert "does not match PyTorch" in message and "max |diff| 0.5 > atol 0.0001" in message
    assert "could not run: NotImplementedError: no float64 kernel for tokcomp::merge" in message


def test_shape_mismatch_fails():
    model = Features().eval()
    expected = r"batch 1 last_hidden_state: shape \[1, 15, 2\], PyTorch \[1, 16, 2\]"
    with pytest.raises(ExportValidationError, match=expected):
        compare_outputs(lambda inputs: [runtime(model)(inputs)[0][:, 1:]], model, SPEC, batch_sizes=(1,))


def test_text_inputs_stay_integers_in_the_float64_reference():
    names = ("input_ids", "attention_mask")
    spec = IOSpec("feature-extraction", "text", names, ("last_hidden_state",), sequence_length=6, vocab_size=11)

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 3)  # fails on float64 ids

        def forward(self, input_ids, attention_mask):
            hidden = self.embed(input_ids) * attention_mask[..., None]
            return (hidden + (self.embed.weight.dtype == torch.float64),)  # every sample "flips" in float64

    model = Text().eval()

    def run(inputs):
        with torch.inference_mode():
            return [(model(inputs["input_ids"], inputs["attention_mask"])[0] + 0.5).numpy()]

    with pytest.raises(ExportValidationError, match="ill-conditioned.*batch 1: all 3 draws"):
        compare_outputs(run, model, spec, batch_sizes=(1,))
