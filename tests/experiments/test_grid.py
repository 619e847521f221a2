"""Sweep files: grid expansion, sub-axes, unions of grids, and every bad-input message."""
import pytest

from depthtune.errors import DepthtuneError
from depthtune.experiments.grid import expand, load_sweep, parse_sweep
from depthtune.experiments.plan import draw, make_plan


def sweep(axes, **extra):
    return parse_sweep({"teachers": {"t": {}, "u": {"system_prompt": "Be brief."}}, "axes": axes, **extra})


def test_product_of_axes_is_the_set_of_cells():
    cells = expand(sweep({"size": [8, 16], "method": ["full", "lora", "prompt"], "seed": [0, 1]}))
    assert len(cells) == 12
    assert len({c.slug for c in cells}) == 12
    assert {(c.settings["size"], c.settings["method"], c.settings["seed"]) for c in cells} == {
        (s, m, seed) for s in (8, 16) for m in ("full", "lora", "prompt") for seed in (0, 1)}
    full = [c for c in cells if c.settings["method"] == "full"]
    assert all(c.settings["rank"] is None for c in full)
    assert all(c.settings["student"] == "self" for c in cells if c.settings["method"] == "prompt")
    assert {c.group for c in cells if c.settings["seed"] == 0} == {c.group for c in cells if c.settings["seed"] == 1}


def test_rank_sub_axis_of_lora_and_union_of_grids_without_duplicates():
    s = sweep([{"method": ["full", {"lora": {"rank": [8, 32]}}]},
               {"method": ["lora:8"], "targets": ["answers", "cot"]}])
    cells = expand(s)
    described = [(c.settings["method"], c.settings["rank"], c.settings["targets"]) for c in cells]
    # lora r8 answers appears in both grids and is kept once
    assert described == [("full", None, "answers"), ("lora", 8, "answers"), ("lora", 32, "answers"),
                         ("lora", 8, "cot")]


def test_generic_dotted_axes_and_several_teachers():
    cells = expand(sweep({"distill.temperature": [1.0, 4.0], "teachers": ["t", ["u", "t"]]}))
    assert len(cells) == 4
    assert {c.overrides["distill.temperature"] for c in cells} == {1.0, 4.0}
    assert {tuple(c.settings["teachers"]) for c in cells} == {("t",), ("t", "u")}


@pytest.mark.parametrize("data, message", [
    ({"axes": {"sise": [8]}}, "unknown sweep axis 'sise' (did you mean 'size'?)"),
    ({"axis": {"size": [8]}}, "unknown sweep key 'axis' (did you mean 'axes'?)"),
    ({"axes": {"distill.temprature": [1]}}, "unknown config key 'distill.temprature' (did you mean 'temperature'?)"),
    ({"axes": {}}, "empty grid"),
    ({}, "empty grid"),
    ({"axes": {"size": []}}, "axis 'size' has no values"),
    ({"axes": {"method": ["full"], "rank": [8]}}, "a LoRA rank with full fine-tuning contradicts itself"),
    ({"axes": {"method": ["prompt"], "student": ["pruned:2"]}}, "prompt distillation's student is the teacher"),
    ({"axes": {"method": ["prompt"], "teachers": [["t", "u"]]}}, "prompt distillation has one teacher"),
    ({"axes": {"method": ["lora:8"], "rank": [4]}}, "the rank is given twice"),
    ({"axes": {"method": ["distil"]}}, "unknown method 'distil'"),
    ({"axes": {"teachers": ["v"]}}, "unknown teacher 'v'"),
    ({"axes": {"diversity": ["some"]}}, "unknown diversity 'some'"),
    ({"axes": {"size": [0]}}, "size must be a positive number"),
    ({"axes": {"student": ["pruned:x"]}}, "pruned students are pruned:N"),
    ({"axes": {"student": ["./no/such/model"]}}, "does not exist"),
    ({"axes": {"distill.temperature": [-1.0]}}, "cell [distill.temperature=-1.0]: distill.temperature must be > 0"),
    ({"axes": {"size": [8]}, "base": {"trian": {}}}, "unknown config key 'base.trian' (did you mean 'train'?)"),
    ({"axes": {"distill.targets": ["cot"]}}, "set by the named axis 'targets'"),
    ({"axes": {"size": [8]}, "name": "../up"}, "sweep name '../up' names its output folder"),
    ({"axes": {"size": [8]}, "teachers": {"t": {"model": "./missing/model"}}}, "model path ./missing/model does not exist"),
])
def test_bad_sweeps_fail_with_one_clear_line(data, message):
    data = {"teachers": {"t": {}, "u": {}}, **data}
    with pytest.raises(DepthtuneError) as e:
        expand(parse_sweep(data))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_size_larger_than_its_pool_fails_before_anything_runs():
    with pytest.raises(DepthtuneError, match="size 40 asks for more training prompts than the 'one' pool holds"):
        make_plan(sweep({"size": [40], "diversity": ["one"]}))


def test_draw_is_balanced_and_nested_and_seeded():
    items = [{"id": f"{s}-{i}", "suite": s} for s in ("a", "b", "c") for i in range(10)]
    small, large = draw(items, 6, 0), draw(items, 15, 0)
    assert set(small) <= set(large)
    assert [sum(x.startswith(s) for x in small) for s in "abc"] == [2, 2, 2]
    assert set(draw(items, 6, 1)) != set(small)
    assert draw(items, "all", 3) == [it["id"] for it in items]


def test_shipped_example_sweep_loads_and_expands():
    from pathlib import Path

    s = load_sweep(Path(__file__).resolve().parents[2] / "examples" / "sweep.yaml")
    plan = make_plan(s)
    assert len(plan.cells) >= 8
    # method x size x seed cells of one teacher share one generation job
    assert len(plan.jobs) < len(plan.cells)
