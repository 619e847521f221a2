"""Rough edges a new user hit, each through the command line's main(argv), in this process: one line naming
the problem and what to do, exit 2, no traceback, and no model loaded when the input alone shows the
problem. One case runs in a real process too, for the exit status and stderr a shell sees."""
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from depthtune.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def depthtune(capsys):
    def call(*args: str) -> Result:
        code = main(list(args))
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return call


def assert_one_line(proc, expected: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("depthtune: error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stdout  # Session.base() logs "loading ..."


def test_a_real_process_gets_exit_2_and_one_line_on_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "depthtune", "run", "--run-dir", str(tmp_path / "run"), "--set",
                           "train.rank=abc"], capture_output=True, text=True, timeout=300)
    assert_one_line(proc, "config key 'train.rank' wants an integer, got 'abc'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.jsonl", '{"prompt": "What is 2+2?"}\n{"prompt": "Caf\u00e9?"}\n'.encode("latin-1"),
     "is not UTF-8 text (byte 0xe9 on line 2); convert it, e.g. `iconv -f latin1 -t utf-8"),
    ("blank.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in ("2+2?", "", None)).encode(),
     "2 of 3 rows have an empty or null prompt (rows 2, 3); fill them in or remove them"),
])
def test_bad_data_files(depthtune, tmp_path, name, content, expected):
    data = tmp_path / name
    data.write_bytes(content)
    proc = depthtune("run", "--run-dir", str(tmp_path / "run"), "--data", str(data))
    assert_one_line(proc, expected)
    assert not (tmp_path / "run").exists()


def test_a_setting_of_the_wrong_type(depthtune, tmp_path):
    proc = depthtune("run", "--run-dir", str(tmp_path / "run"), "--set", "train.rank=abc")
    assert_one_line(proc, "config key 'train.rank' wants an integer, got 'abc'")


def test_select_before_score_names_the_stage_to_run(depthtune, tmp_path):
    run_dir = tmp_path / "run"
    proc = depthtune("select", "--run-dir", str(run_dir))
    assert_one_line(proc, f"the score stage has not run in {run_dir}: run `depthtune score --run-dir {run_dir}`")


def test_a_tracker_that_is_not_installed_names_the_pip_install(depthtune, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    proc = depthtune("run", "--run-dir", str(tmp_path / "run"), "--report-to", "wandb")
    assert_one_line(proc, "--report-to wandb needs the wandb package: pip install wandb")
    assert not (tmp_path / "run").exists()


def test_template_chat_on_a_model_without_one_is_refused_from_its_tokenizer(depthtune, tiny_model_dir, tmp_path):
    import shutil

    plain = shutil.copytree(tiny_model_dir, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    proc = depthtune("run", "--run-dir", str(tmp_path / "run"), "--model", str(plain), "--template", "chat")
    assert_one_line(proc, "--template chat: this model's tokenizer has no chat template; use --template raw")
    assert not (tmp_path / "run").exists()
