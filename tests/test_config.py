import pytest

from depthtune.config import dump_config, load_config, side
from depthtune.errors import DepthtuneError


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.select.threshold is None and cfg.select.top_share == 0.5 and cfg.evaluate.deep_line == 75
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_set_overrides_and_flags(tmp_path):
    cfg = load_config(None, ["train.rank=4", "data.suites=[facts]"], **{"select.threshold": 70.0})
    assert cfg.train.rank == 4 and cfg.data.suites == ["facts"] and cfg.select.threshold == 70


def test_unknown_key_suggests_the_closest():
    with pytest.raises(DepthtuneError, match="did you mean 'threshold'"):
        load_config(None, ["select.treshold=3"])
    with pytest.raises(DepthtuneError, match="did you mean 'train'"):
        load_config(None, ["trian.rank=3"])


@pytest.mark.parametrize("override", ["select.threshold=150", "select.threshold=-1", "generate.temperature=0",
                                      "generate.k=0", "data.checker=fuzzy", "score.weights={a: 1}"])
def test_out_of_range_values_are_refused(override):
    with pytest.raises(DepthtuneError):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(DepthtuneError, match="not valid YAML"):
        load_config(p)


def test_typed_keys_take_yaml_numbers_and_refuse_the_rest_in_one_line():
    assert load_config(None, ["train.learning_rate=5e-3"]).train.learning_rate == 0.005  # YAML reads it as a string
    assert load_config(None, ["generate.temperature=1"]).generate.temperature == 1.0
    with pytest.raises(DepthtuneError, match=r"config key 'train.rank' wants an integer, got 'abc'"):
        load_config(None, ["train.rank=abc"])
    with pytest.raises(DepthtuneError, match=r"'model' is a section"):
        load_config(None, ["model=3"])


def test_distill_overrides_are_keys_of_their_sections():
    cfg = load_config(None, ["distill.generate={k: 2, max_new_tokens: 16}", "distill.train={learning_rate: 0.001}"])
    teacher = side(cfg)
    assert (teacher.generate.k, teacher.generate.max_new_tokens, teacher.train.learning_rate) == (2, 16, 0.001)
    assert (cfg.generate.k, cfg.train.learning_rate) == (4, None)  # the run's own settings are untouched
    assert side(cfg).select.selector == "correct"  # the teacher's samples: every correct one, by default
    with pytest.raises(DepthtuneError, match="unknown config key 'distill.generate.kk'"):
        load_config(None, ["distill.generate={kk: 2}"])
    with pytest.raises(DepthtuneError, match="'distill.train.rank' wants an integer"):
        load_config(None, ["distill.train={rank: x}"])


def test_one_distill_override_is_set_by_its_dotted_key():
    cfg = load_config(None, ["distill.select.selector=random", "distill.generate.k=2"])
    assert cfg.distill.select == {"selector": "random"} and side(cfg).select.selector == "random"
    assert side(cfg).generate.k == 2 and cfg.generate.k == 4
    with pytest.raises(DepthtuneError, match="unknown config key 'distill.select.selektor'"):
        load_config(None, ["distill.select.selektor=random"])
    with pytest.raises(DepthtuneError, match="'distill.generate.k' wants an integer"):
        load_config(None, ["distill.generate.k=many"])


@pytest.mark.parametrize("old, new", [("distill.k=3", "distill.generate.k"),
                                      ("distill.learning_rate=0.1", "distill.train.learning_rate")])
def test_a_key_that_moved_names_its_new_place(old, new):
    with pytest.raises(DepthtuneError, match=f"is now '{new}'"):
        load_config(None, [old])
