"""scripts/prepare_data.py end to end, as a user runs it."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, write


def run_script(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_prepare_data_writes_splits_and_report(tmp_path):
    out = tmp_path / "prepared"
    result = run_script(
        "scripts/prepare_data.py", "--config", "recipe/configs/smoke.yaml", "--output_dir", str(out),
        "--dataset_cache_dir", str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "data_report.json").read_text())
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert report["dialogues_read"] == 898 and report["skipped"]["count"] == 0
    assert report["train"]["dialogues"] + report["validation"]["dialogues"] == 898
    assert len(train) == report["train"]["examples"] and len(validation) == report["validation"]["examples"]
    assert train[0]["text"].startswith("Alex: ") and "\nBob: " in train[0]["text"]
    assert sum(row["text"].endswith("<|endoftext|>") for row in train) == report["train"]["dialogues"]
    assert "898 read, 0 skipped, 718 train / 180 validation" in result.stdout


def test_prepare_data_reports_bad_input_and_skips_on_request(tmp_path):
    data = write(tmp_path / "d.jsonl", '{"Alex": "hi", "Bob": "yo"}\n{"Alex": 5}\n' + '{"A": "x", "B": "y"}\n' * 4)
    common = ["scripts/prepare_data.py", "--data_path", data, "--model_name_or_path", "recipe/assets/tiny-gpt2",
              "--output_dir", str(tmp_path / "p"), "--dataset_cache_dir", str(tmp_path / "cache")]
    failed = run_script(*common)
    assert failed.returncode != 0
    assert "d.jsonl line 2: turn 1 (Alex) has a value that is a number" in failed.stderr
    skipped = run_script(*common, "--on_bad_dialogue", "skip")
    assert skipped.returncode == 0, skipped.stderr
    report = json.loads((tmp_path / "p" / "data_report.json").read_text())
    reason = "turn 1 (Alex) has a value that is a number; it must be a string"
    assert report["skipped"] == {"count": 1, "first": [{"where": f"{data} line 2", "reason": reason}]}


def test_prepare_data_without_hub_fails_fast_with_the_offline_way(tmp_path):
    import time

    start = time.monotonic()
    result = run_script("scripts/prepare_data.py", "--output_dir", str(tmp_path / "p"))
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert "cannot download the tokenizer 'distilgpt2'" in result.stderr
    assert "recipe/configs/smoke.yaml" in result.stderr


LIMIT = "error: max_length 1024 is longer than gpt2's 512 positions; set --max_length 512 or less"


@pytest.mark.parametrize("tokenizer", [[], ["--tokenizer_name_or_path", "recipe/assets/tiny-gpt2"]],
                         ids=["model's tokenizer", "tokenizer of its own"])
def test_prepare_data_refuses_max_length_beyond_the_model_positions_before_reading_the_data(tmp_path, tokenizer):
    """As training does (check_max_length, from config.json): in one line, before the data is read or tokenized
    and before anything is written. The data file is bad, so reading it first would fail with another error."""
    data = write(tmp_path / "d.jsonl", '{"Alex": 5}\n')
    out, cache = tmp_path / "prepared", tmp_path / "cache"
    result = run_script("scripts/prepare_data.py", "--data_path", data, "--model_name_or_path",
                        "recipe/assets/tiny-gpt2", *tokenizer, "--max_length", "1024", "--output_dir", str(out),
                        "--dataset_cache_dir", str(cache))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [LIMIT]
    assert not out.exists() and not cache.exists()


def test_prepare_data_with_a_tokenizer_alone_sets_no_limit_and_stays_offline(tmp_path):
    """--tokenizer_name_or_path with a base that is not here (the default distilgpt2, an empty Hub cache): no
    config, so no limit is made up; and the base is not looked for on the Hub, which here is online (a local
    server that answers 404 to everything) and must get no request."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(f"{self.command} {self.path}")
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    data = write(tmp_path / "d.jsonl", "".join(f'{{"Alex": "hi {i}", "Bob": "hello {i}"}}\n' for i in range(10)))
    out = tmp_path / "prepared"
    hub = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}")
    try:
        result = subprocess.run(
            [sys.executable, "scripts/prepare_data.py", "--data_path", data, "--tokenizer_name_or_path",
             "recipe/assets/tiny-gpt2", "--max_length", "1024", "--output_dir", str(out), "--dataset_cache_dir",
             str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
        )
    finally:
        hub.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert asked == []
    assert json.loads((out / "data_report.json").read_text())["dialogues_read"] == 10
