"""Recipe schema: strict keys, typed passes, errors with file, line, key path and valid choices."""

from pathlib import Path

import pytest

from tokcomp.errors import RecipeError
from tokcomp.recipe import load_recipe, parse_recipe

GOOD = """\
model: zoo:dinov2-small
passes:
  - type: tome
    r: {r: 16, inflect: -0.5}
    targets: ["re:encoder\\\\.layer\\\\.[0-9]+"]
seed: 3
"""


def test_good_recipe_parses_into_typed_passes():
    recipe = parse_recipe(GOOD)
    assert recipe.model.source == "zoo:dinov2-small"
    assert recipe.seed == 3
    (spec,) = recipe.passes
    assert spec.type == "tome" and spec.config.r.inflect == -0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: m\npasses:\n  - type: tomee\n", ["r.yaml:3", "passes[0].type", "'tomee'", "valid types: ", "tome"]),
        ("model: m\npasses:\n  - type: tome\n    r: 2\n    rr: 1\n", ["r.yaml:5", "passes[0].rr", "valid keys:", "proportional_attention"]),
        ("model: m\nsede: 1\npasses: [{type: tome, r: 1}]\n", ["r.yaml:2", "sede", "valid keys: model, passes"]),
        ("model: m\npasses:\n  - type: tome\n    r: lots\n", ["r.yaml:4", "passes[0].r", "'lots'"]),
        ("model: m\npasses:\n  - {type: tome, r: 2, target_flops: 0.5}\n", ["passes[0]", "exactly one of"]),
        ("model: m\npasses: [{type: tome, r: 1}]\ncalibration:\n  samples: 0\n", ["r.yaml:4", "calibration.samples", "greater than 0"]),
        ("model: [oops\n", ["r.yaml:2", "YAML syntax error"]),
        ("model: m\n", ["passes", "required"]),
        ("model: m\npasses:\n  - r: 2\n", ["passes[0]", "missing 'type'"]),
    ],
)
def test_recipe_errors_name_where_and_what(text, expected):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, source="r.yaml")
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)  # unknown keys, bad values and unknown pass types would raise here
    assert recipe.passes
