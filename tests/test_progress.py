"""Progress: plain lines with rate and time left off a terminal, a tqdm bar on one, an early estimate either way."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap

from depthtune.progress import Progress, duration
from depthtune.stages.generate import sample_all


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_estimate_after_the_first_batch_then_every_interval_then_a_summary():
    clock, lines = Clock(), []
    bar = Progress(2000, "generate", unit="prompt", log=lines.append, hint="--max-train-prompts N", every=30,
                   bar=False, clock=clock)
    clock.t = 8.0
    bar.update(16, tok_s=410)  # 2 prompts/s: 1,984 more take about 16.5 minutes, which is long
    assert lines == [("  generate: 16/2000 prompts (1%), 2.00 prompts/s, 410 tok/s, 16 min 32 s left; expected about "
                      "16 min 32 s more (shorten it with --max-train-prompts N)")]
    clock.t = 20.0
    bar.update(16)  # within 30 s of the last line: quiet
    assert len(lines) == 1
    clock.t = 40.0
    bar.update(48)
    assert len(lines) == 2 and "left" in lines[1]
    assert lines[1].startswith("  generate: 80/2000 prompts (4%), 2.00 prompts/s")
    clock.t = 1000.0
    bar.update(1920, tok_s=400)
    bar.close()
    assert lines[-1] == "  generate: 2000/2000 prompts in 16 min 40 s (2.00 prompts/s, 400 tok/s)"


def test_a_short_stage_names_no_caps_and_a_resumed_one_counts_only_new_work():
    clock, lines = Clock(), []
    bar = Progress(100, "score", unit="token", log=lines.append, initial=60, hint="--k N", bar=False, clock=clock)
    clock.t = 10.0
    bar.update(20)  # 2 tokens/s over this process's 20, not 8/s over 80
    assert lines == ["  score: 80/100 tokens (80%), 2.00 tokens/s, 10 s left; expected about 10 s more"]
    assert duration(3725) == "1 h 2 min" and duration(200) == "3 min 20 s" and duration(7.4) == "7 s"


class FakeSampler:
    vocab_size = 10

    def sample_chunk(self, items, *, k, **kw):
        rows = [{"sample_id": f"{it['id']}#{j}", "prompt_id": it["id"], "completion_ids": [1, 2, 3], "gen_seconds": 0.1}
                for it in items for j in range(k)]
        return rows, 0.1 * len(rows), []


def test_sample_all_reports_progress_in_prompts(tmp_path):
    lines = []
    items = [{"id": f"p{i}"} for i in range(10)]
    rows, _ = sample_all(FakeSampler(), items, tmp_path / "partial.jsonl", k=2, temperature=1.0, top_p=1.0,
                         max_new_tokens=3, batch_size=1, seed=0, progress=lines.append, desc="generate")
    assert len(rows) == 20  # a chunk is 4 x batch_size sequences: 2 prompts of k = 2
    assert lines[0].startswith("  generate: 2/10 prompts (20%)") and "expected about" in lines[0]
    assert lines[-1].startswith("  generate: 10/10 prompts in ")


def test_on_a_terminal_a_bar_redraws_with_rate_and_time_left():
    """A real pseudo-terminal on stderr: the bar is tqdm's, with its '<' time-left field and a rate."""
    script = textwrap.dedent("""
        import time
        from depthtune.progress import Progress
        bar = Progress(6, "train", unit="step", log=print)
        for _ in range(6):
            time.sleep(0.05)
            bar.update(1, loss="0.5")
        bar.close()
    """)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=child, stdout=subprocess.PIPE, text=True)
    os.close(child)
    seen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = proc.communicate(timeout=30)[0]
    os.close(main)
    text = seen.decode(errors="replace")
    assert "\r" in text and "train:" in text and "step/s" in text and "<" in text and "loss=0.5" in text, text
    assert "expected about" in out and "train: 6/6 steps in" in out  # the estimate and the summary stay as lines
