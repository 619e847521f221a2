"""The HTML reports of run, compare, sweep and ablate, opened in a real browser: Debian's Chromium, driven by
Playwright (its own browser download is not used: executable_path is the system Chromium). Every image
decodes and has a size, there are no console errors, nothing is loaded from outside the file, the tables
render, model output is text (never markup), and the page reads at a phone's width without sideways scrolling.

Needs Chromium (apt-get install chromium) and Playwright (the test extra); without them it fails and says
which is missing, rather than passing unnoticed.
"""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import make_tiny_model, tiny_args

from depthtune.cli import main

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FAST = ["--max-train-prompts", "6", "--max-eval-prompts", "4"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tokenizer_dir):
    """One tiny report of each kind."""
    root = tmp_path_factory.mktemp("reports")
    model = make_tiny_model(root / "model", tokenizer_dir, layers=4)
    out = {}
    assert main(["run"] + tiny_args(model, root / "run") + FAST) == 0
    out["run"] = root / "run" / "report.html"
    assert main(["compare", "--run-dir", str(root / "cmp"), "--teacher", str(model), "--student-layers", "2", *FAST,
                 "--set", "generate.max_new_tokens=5", "--set", "evaluate.max_new_tokens=5",
                 "--set", "distill.select={selector: random}", "--set", "select.exclude_degenerate=false",
                 "--set", "select.min_kept=0", "--set", "train.epochs=1", "--set", "train.batch_size=4"]) == 0
    out["compare"] = root / "cmp" / "report.html"
    spec = {"name": "browser", "base": {"data": {"max_eval_prompts": 6}, "generate": {"max_new_tokens": 4},
                                        "evaluate": {"max_new_tokens": 4}, "select": {"require_correct": False},
                                        "train": {"epochs": 1, "batch_size": 4}, "distill": {"generate": {"k": 2}}},
            "teachers": {"a": {"model": str(model)}}, "axes": {"size": [3, 6], "method": ["lora"], "student": ["self"]}}
    (root / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(root / "s.yaml"), "--sweep-dir", str(root / "sweep")]) == 0
    out["sweep"] = root / "sweep" / "sweep_report.html"
    assert main(["ablate"] + tiny_args(model, root / "abl") + FAST +
                ["--set", "ablate.selectors=[random, logprob]", "--set", "ablate.seeds=[0]", "--set", "ablate.keep=4"]) == 0
    out["ablate"] = root / "abl" / "ablate" / "report.html"
    return out


def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: pip install playwright (the test extra has it)")
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Chromium: apt-get install chromium (Playwright's own download is not used)")
    return sync_playwright


@pytest.mark.parametrize("kind", ["run", "compare", "sweep", "ablate"])
def test_a_report_reads_in_chromium_on_a_phone(reports, kind):
    path = reports[kind]
    with browser()() as p:
        chrome = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = chrome.new_page(viewport={"width": 390, "height": 844})  # a phone
        errors, outside = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        tables = page.eval_on_selector_all("table", "els => els.map(e => e.rows.length)")
        sideways = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        scripts = page.eval_on_selector_all("script", "els => els.length")
        title = page.title()
        chrome.close()
    assert not errors, errors
    assert not outside, outside
    assert images and all(ok and w > 0 and h > 0 for ok, w, h in images), images
    assert tables and all(n >= 2 for n in tables), tables  # a header and at least one row each
    assert sideways <= 1, f"the page scrolls sideways by {sideways}px at a phone's width"
    assert scripts == 0 and title.startswith(("depthtune", "Sweep report"))


def test_model_output_is_text_not_markup(tmp_path):
    from depthtune import htmlpage

    md = "| a | b |\n|---|---|\n| <script>alert(1)</script> | <b>bold?</b> & more |\n"
    page = htmlpage.render(md, tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>bold?</b>" not in page
    assert json.dumps(page)  # one string, nothing fetched
