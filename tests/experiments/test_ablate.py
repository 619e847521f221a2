"""`depthtune ablate` on a tiny model: equal-sized selections, one adapter per selector and seed, resume."""
import json

from helpers import assert_self_contained_html, tiny_args

from depthtune import artifacts
from depthtune.cli import main

FAST = ["--max-train-prompts", "6", "--max-eval-prompts", "4", "--set", "ablate.selectors=[cdm,random,logprob]",
        "--set", "ablate.seeds=[0,1]", "--set", "ablate.keep=5"]


def test_ablate_trains_every_selector_on_the_same_number_of_samples(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "abl"
    assert main(["ablate"] + tiny_args(tiny_model_dir, run_dir) + FAST) == 0
    m = json.loads((run_dir / "ablate" / "ablate.json").read_text())
    assert set(m["selectors"]) == {"cdm", "random", "logprob"} and m["keep"] == 5 and m["reference"] == "cdm"
    for sel in ("cdm", "random", "logprob"):
        for seed in (0, 1):
            cell = run_dir / "ablate" / f"{sel}-seed{seed}"
            assert len(artifacts.read_jsonl(cell / "select" / "selected.jsonl")) == 5
            assert (cell / "train" / "adapter" / "adapter_config.json").exists()
            assert len(artifacts.read_jsonl(cell / "evaluate" / "tuned.jsonl")) == 4
        e = m["selectors"][sel]
        assert len(e["seed_accuracy"]) == 2 and "ci95" in e["accuracy"] and "ci95" in e["accuracy"]["vs_untrained"]
    # random draws differ between seeds; cdm's top 5 do not
    pick = lambda s, k: {r["sample_id"] for r in artifacts.read_jsonl(run_dir / "ablate" / f"{s}-seed{k}" / "select"  # noqa: E731
                                                                      / "selected.jsonl")}
    assert pick("cdm", 0) == pick("cdm", 1) and pick("random", 0) != pick("random", 1)
    versus = [f for f in m["findings"] if f.split(":")[0] in ("cdm beat random", "random beat cdm",
                                                             "no detectable difference between cdm and random",
                                                             "cdm beat logprob", "logprob beat cdm",
                                                             "no detectable difference between cdm and logprob")]
    assert len(versus) == 2, m["findings"]  # one verdict against the reference for each other selector
    assert len(m["findings"]) == 2 + 3  # and one line against the untrained model per selector
    assert_self_contained_html(run_dir / "ablate" / "report.html", min_images=1)
    # a rerun finds every cell finished and trains nothing
    capsys.readouterr()
    (run_dir / "ablate" / "random-seed1" / "result.json").unlink()
    assert main(["ablate", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("training on") == 1 and "[score] already finished" in out


def test_label_free_ablation_selects_without_references(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "abl"
    args = tiny_args(tiny_model_dir, run_dir) + ["--max-train-prompts", "6", "--max-eval-prompts", "4", "--label-free",
                                                 "--set", "ablate.selectors=[cdm,logprob,random]", "--set",
                                                 "ablate.seeds=[0]", "--set", "ablate.keep=4"]
    args[args.index("select.require_correct=false")] = "select.require_correct=true"  # the run's own setting
    del args[args.index("--threshold"):args.index("--threshold") + 2]  # the run's own selector: correct, no CDM
    assert main(["ablate"] + args) == 0
    m = json.loads((run_dir / "ablate" / "ablate.json").read_text())
    # the cdm cell ranked by CDM, which the score stage computed for it though the run's selector needs none
    cdm_kept = artifacts.read_jsonl(run_dir / "ablate" / "cdm-seed0" / "select" / "selected.jsonl")
    assert len(cdm_kept) == 4 and all(r["cdm"] is not None for r in cdm_kept)
    assert m["label_free"] and not any(e["labels"] for e in m["selectors"].values())
    assert m["reference"] == "cdm"  # majority was not among the selectors compared
    assert "Label-free: every selector but `correct` chose its samples without reference answers" in \
        (run_dir / "ablate" / "report.md").read_text()
