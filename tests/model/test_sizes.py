"""Named sizes hit their nominal parameter counts; gin files agree with get_config; bad configs fail clearly."""
import gin
import pytest

from model.config import ModelConfig
from model.sizes import NOMINAL_PARAMS, SIZE_NAMES, count_params, get_config, gin_path, gin_text


@pytest.mark.parametrize("name", ["1b", "2b", "4b", "8b", "16b"])
def test_large_sizes_within_ten_percent_of_nominal(name):
    kind, nominal = NOMINAL_PARAMS[name]
    counts = count_params(get_config(name))
    assert kind == "total" and abs(counts[kind] / nominal - 1) <= 0.10, counts
    assert get_config(name).vocab_size == 32768 and get_config(name).num_kv_heads == 1


def test_count_params_matches_closed_form():
    config = ModelConfig(vocab_size=100, d_model=16, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=6, d_ff=40)
    per_layer = 16 * 4 * 6 + 16 * 2 * 2 * 6 + 4 * 6 * 16 + 16 * 2 * 40 + 40 * 16 + 2 * 16
    expected_non_embedding = 3 * per_layer + 16
    assert count_params(config) == {"total": expected_non_embedding + 100 * 16, "non_embedding": expected_non_embedding}
    untied = count_params(config.replace(tie_embeddings=False))
    assert untied["total"] == expected_non_embedding + 2 * 100 * 16


def test_demo_ladder_grows_about_4x():
    counts = [count_params(get_config(n))["non_embedding"] for n in ("xs", "s", "m", "l")]
    for name, count in zip(("xs", "s", "m", "l"), counts):
        assert 0.7 <= count / NOMINAL_PARAMS[name][1] <= 1.3, (name, count)
    for smaller, larger in zip(counts, counts[1:]):
        assert 2.5 <= larger / smaller <= 5.0
    assert get_config("m", vocab_size=1000).vocab_size == 1000


@pytest.mark.parametrize("name", SIZE_NAMES)
def test_gin_file_agrees_with_get_config(name):
    with open(gin_path(name)) as handle:
        assert handle.read() == gin_text(name), "regenerate with: python -m model.sizes --write_gin"
    try:
        gin.clear_config()
        gin.parse_config_file(gin_path(name))
        assert gin.query_parameter("%MODEL").scoped_configurable_fn() == get_config(name)
        assert ModelConfig() == ModelConfig(name="custom"), "gin binds MODEL only, never the class itself"
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_kv_heads", 3), ("num_heads", 0), ("d_model", -1), ("head_dim", 7), ("dtype", "int8"),
        ("param_dtype", "float64"), ("dropout_rate", 1.5), ("vocab_size", 2.5), ("tie_embeddings", "yes"),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_config_round_trips_through_dict_and_rejects_unknown_fields():
    config = get_config("s")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="nonsense"):
        ModelConfig.from_dict({**config.to_dict(), "nonsense": 1})
    with pytest.raises(ValueError, match="unknown model size"):
        get_config("3b")
