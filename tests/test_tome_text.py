"""ToMe on text: the similarity metric per model family (hidden states for BERT-family encoders,
attention keys for vision), recorded so checkpoints rebuild what was compiled.

Tiny random models check the mechanics fast; the `slow` tests check the dynamic-padding claims
on real MiniLM-L6 with the benchmark's held-out sentences (benchmarks/dynamic_padding.py).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import tokcomp
from tests.conftest import rate_at, state_of, tiny_bert, tiny_vision
from tokcomp.errors import TokcompError
from tokcomp.passes.tome import ToMePass
from tokcomp.reducers.tome import ToMe
from tokcomp.reducers.transform import TokenTransform
from tokcomp.surgery import capture_final_state, token_blocks
from tokcomp.surgery.attention import AttentionInfo


def _metrics(model) -> set[str]:
    return {block.reducer.metric for block in token_blocks(model) if block.reducer is not None}


def _record(model, passes, **kwargs):
    from tokcomp.pipeline import apply_passes

    (record,) = apply_passes(model, passes, **kwargs)
    return record


def test_bert_family_defaults_to_hidden_states_and_vision_to_keys():
    bert = tiny_bert()
    assert _record(bert, [{"type": "tome", "r": 2}], sequence_length=16).metadata["metric"] == "hidden"
    assert _metrics(bert) == {"hidden"}
    for kind in ("vit", "dinov2"):
        vision = tiny_vision(kind)
        assert _record(vision, [{"type": "tome", "r": 4}]).metadata["metric"] == "keys"
        assert _metrics(vision) == {"keys"}


def test_an_explicit_metric_overrides_the_family_default():
    bert = tiny_bert()
    record = _record(bert, [{"type": "tome", "r": 2, "metric": "keys"}], sequence_length=16)
    assert (record.metadata["metric"], _metrics(bert)) == ("keys", {"keys"})
    vision = tiny_vision("vit")
    assert _record(vision, [{"type": "tome", "r": 4, "metric": "hidden"}]).metadata["metric"] == "hidden"
    assert _metrics(vision) == {"hidden"}


def test_an_unknown_metric_is_refused():
    with pytest.raises(TokcompError, match="metric"):
        tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 2, "metric": "values"}], sequence_length=16)
    with pytest.raises(TokcompError, match="unknown ToMe metric 'values'"):
        ToMe(rate_at(1, 6), 1, metric="values")


def _tokens_and_attention():
    """Eight tokens, CLS first, whose hidden states and keys disagree on the most similar A-B pair:
    hidden states pair tokens 2 and 3, keys pair tokens 4 and 5 (A = even, B = odd)."""
    x = torch.randn(1, 8, 6)
    x[0, 3] = x[0, 2] + 0.01
    keys = torch.randn(1, 1, 8, 6)
    keys[0, 0, 5] = keys[0, 0, 4] + 0.01
    return x, AttentionInfo(query=keys, key=keys, bias=None, scale=1.0)


@pytest.mark.parametrize(("metric", "pair"), [("hidden", [2, 3]), ("keys", [4, 5])])
def test_the_metric_decides_which_tokens_merge(metric, pair):
    x, info = _tokens_and_attention()
    out, state = ToMe(rate_at(1, 8), 1, metric=metric)(x, state_of(torch.ones(1, 8)), info)
    merged = state.source[0][state.size[0] == 2]
    assert merged.nonzero()[:, 1].tolist() == pair
    row = (state.size[0] == 2).nonzero().item()
    assert torch.allclose(out[0, row], x[0, pair].mean(0))


@pytest.mark.parametrize("metric", ["hidden", "keys"])
def test_tome_is_exclusive_bipartite_merging_on_its_metric(metric):
    """ToMe on either metric is the k = 1 alternating construction of Token Transforming on the same
    metric: one matching implementation, token for token, padding included."""
    x, info = _tokens_and_attention()
    x = x.expand(2, -1, -1).contiguous()
    info = info._replace(query=info.query.expand(2, -1, -1, -1), key=info.key.expand(2, -1, -1, -1))
    state = state_of(torch.ones(2, 8), real=[[1] * 8, [1] * 5 + [0] * 3])
    ours = ToMe(rate_at(2, 8), 1, metric=metric)(x, state, info)
    reference = TokenTransform(rate_at(2, 8), 1, k=1, selection="alternating", metric=metric)(x, state, info)
    assert torch.equal(ours[0], reference[0])
    for a, b in zip(ours[1], reference[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("metric", ["hidden", "keys"])
def test_a_padded_sentence_is_reduced_as_when_alone_with_either_metric(metric):
    model = tokcomp.apply(tiny_bert().double(), [{"type": "tome", "r": 3, "metric": metric}], sequence_length=16)
    lengths = [16, 12, 7, 3]
    ids = torch.randint(5, 200, (4, 16))
    mask = (torch.arange(16)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad(), capture_final_state(model) as states:
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = [model(input_ids=ids[i : i + 1, :n]).last_hidden_state[0] for i, n in enumerate(lengths)]
    for row, expected in enumerate(alone):
        assert int(states[0].real[row].sum()) == expected.shape[0]
        assert (batched[row, : expected.shape[0]] - expected).abs().max().item() <= 1e-9


def test_the_hidden_metric_compiles_to_one_graph():
    model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 3}], sequence_length=16)
    ids, mask = torch.randint(5, 200, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    explanation = torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_restore_rebuilds_the_recorded_metric_and_version_1_records_use_keys():
    compiled = tiny_bert()
    record = _record(compiled, [{"type": "tome", "r": 2}], sequence_length=16)
    config = ToMePass.Config(**record.config)
    assert "metric" not in record.config  # the user's config, the resolved choice is in the metadata
    rebuilt = tiny_bert()
    ToMePass().restore(rebuilt, config, record.metadata)
    assert _metrics(rebuilt) == {"hidden"}
    old = {key: value for key, value in record.metadata.items() if key != "metric"}
    version_1 = tiny_bert()
    ToMePass().restore(version_1, config, old)
    assert _metrics(version_1) == {"keys"}


def test_a_checkpoint_reloads_with_its_metric(tmp_path):
    from transformers import BertTokenizerFast

    folder = tmp_path / "bert"
    model = tiny_bert()
    model.config.architectures = ["BertModel"]
    model.save_pretrained(folder)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(195)]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    recipe = {
        "model": str(folder),
        "passes": [{"type": "tome", "r": 2}],
        "evaluation": {"data": "zoo:text", "samples": 4, "batch_size": 4, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    loaded = tokcomp.load(out)
    assert _metrics(loaded) == {"hidden"}
    ids = torch.randint(5, 200, (2, 16))
    compiled = tokcomp.apply(tiny_bert(), recipe["passes"], sequence_length=128)
    compiled.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, compiled(input_ids=ids).last_hidden_state)


# ---------------------------------------------------------------- real MiniLM (zoo), benchmark data

BUCKET_LABELS = ("8-16", "17-32", "33-64")


@pytest.fixture(scope="module")
def minilm_buckets(minilm):
    """MiniLM compiled once at -35% (128 tokens) with the default (hidden) and with the keys metric,
    and the benchmark's held-out sentences per bucket."""
    from benchmarks.dynamic_padding import buckets

    models = {}
    for metric in ("hidden", "keys"):
        model = copy.deepcopy(minilm.model)
        spec = {"type": "tome", "target_flops": "-35%"} | ({"metric": "keys"} if metric == "keys" else {})
        _record(model, [spec], sequence_length=128)
        models[metric] = model
    return models, buckets(minilm.processor, 64)


def _bucket_cosines(minilm, model, texts):
    from benchmarks.dynamic_padding import cosines

    with torch.inference_mode():
        return cosines(minilm.model, model, minilm.processor, texts, 16)


@pytest.mark.slow
@pytest.mark.parametrize("label", BUCKET_LABELS)
def test_minilm_real_token_flops_cut_is_within_5_points_of_35_percent(minilm, minilm_buckets, label):
    from benchmarks.dynamic_padding import flops_cut

    models, texts = minilm_buckets
    reducers = [block.reducer for block in token_blocks(models["hidden"])]
    cuts = [flops_cut(minilm.model, reducers, len(minilm.processor(t)["input_ids"])) for t in texts[label]]
    assert len(cuts) == 64
    assert abs(sum(cuts) / len(cuts) - 0.35) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("label", BUCKET_LABELS)
def test_minilm_hidden_metric_beats_keys_in_every_bucket(minilm, minilm_buckets, label):
    """Paired over the same sentences: the family default is better than ToMe's key metric."""
    models, texts = minilm_buckets
    hidden = _bucket_cosines(minilm, models["hidden"], texts[label])
    keys = _bucket_cosines(minilm, models["keys"], texts[label])
    assert (hidden - keys).mean() > 0.02


@pytest.mark.slow
@pytest.mark.parametrize(
    "label",
    [
        pytest.param(
            "8-16",
            marks=pytest.mark.xfail(
                strict=True,
                reason="ToMe's similarity-ranked merges reach ~0.93 on 8-16 real tokens at -35%; greedy matching "
                "on a learned merge cost (cost: learned) reaches ~0.955 at its own budget, which pays for the cost "
                "model: test_minilm_learned_merge_cost_reaches_0_95",
            ),
        ),
        "17-32",
        "33-64",
    ],
)
def test_minilm_mean_pooled_cosine_reaches_0_95(minilm, minilm_buckets, label):
    models, texts = minilm_buckets
    assert _bucket_cosines(minilm, models["hidden"], texts[label]).mean() >= 0.95


@pytest.mark.slow
def test_minilm_hidden_metric_output_matches_a_padded_batch_run_alone(minilm, minilm_buckets):
    from tokcomp.analysis.fidelity import model_outputs

    models, texts = minilm_buckets
    sentences = texts["8-16"][:4] + texts["33-64"][:4]
    batch = dict(minilm.processor(sentences, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        padded = model_outputs(models["hidden"], batch, "mean")["embedding"]
        for row, sentence in enumerate(sentences):
            alone = model_outputs(models["hidden"], dict(minilm.processor([sentence], return_tensors="pt")), "mean")
            assert F.cosine_similarity(padded[row], alone["embedding"][0], dim=0) > 1 - 1e-5


@pytest.fixture(scope="module")
def minilm_learned(minilm):
    """MiniLM at -35% with greedy matching on a learned merge cost, calibrated as the benchmark does
    (Debian Reference prose, never the held-out sentences)."""
    from benchmarks.dynamic_padding import CALIBRATION, PASSES

    name = "ToMe, greedy, norm-preserving, learned cost"
    model = copy.deepcopy(minilm.model)
    record = _record(
        model,
        [PASSES[name]],
        sequence_length=128,
        processor=minilm.processor,
        calibration=CALIBRATION[name],
        pooling=minilm.pooling,
    )
    return model, record.metadata["r_per_layer"]


@pytest.mark.heavy
@pytest.mark.parametrize("label", BUCKET_LABELS)
def test_minilm_learned_merge_cost_reaches_0_95(minilm, minilm_buckets, minilm_learned, label):
    """The 64 held-out sentences of each bucket, in dynamically padded batches, at its own -35% budget (which
    counts the cost model's MACs, so it removes more tokens than ToMe)."""
    _, texts = minilm_buckets
    assert _bucket_cosines(minilm, minilm_learned[0], texts[label]).mean() >= 0.95


@pytest.mark.heavy
@pytest.mark.parametrize("label", BUCKET_LABELS)
def test_minilm_learned_cut_counting_its_cost_model_is_within_5_points_of_35_percent(
    minilm, minilm_buckets, minilm_learned, label
):
    """The field leaves matching out of a FLOPs count; a learned cost is a model the budget must pay for."""
    from benchmarks.dynamic_padding import flops_cut

    _, texts = minilm_buckets
    reducers = [block.reducer for block in token_blocks(minilm_learned[0])]
    lengths = [len(minilm.processor(t)["input_ids"]) for t in texts[label]]
    cuts = [flops_cut(minilm.model, reducers, length, count_cost_model=True) for length in lengths]
    assert abs(sum(cuts) / len(cuts) - 0.35) <= 0.05


@pytest.mark.heavy
def test_minilm_learned_merge_cost_beats_similarity_on_short_sentences(minilm, minilm_buckets, minilm_learned):
    """Same sentences, same counts, same greedy matching and merge: only the ranking of pairs differs."""
    from benchmarks.dynamic_padding import at_counts

    _, texts = minilm_buckets
    learned_model, r_per_layer = minilm_learned
    similarity = copy.deepcopy(minilm.model)
    _record(similarity, [at_counts("ToMe, greedy, norm-preserving", r_per_layer)], sequence_length=128)
    learned = _bucket_cosines(minilm, learned_model, texts["8-16"])
    ranked_by_similarity = _bucket_cosines(minilm, similarity, texts["8-16"])
    difference = learned - ranked_by_similarity
    # the paired mean difference is above zero by more than twice its standard error
    assert difference.mean() > 2 * difference.std() / len(difference) ** 0.5
