"""``prism-plugin data teach`` against a real OpenAI-style server: LLaMA-Factory's ``llamafactory-cli api``
serving the tiny policies on 127.0.0.1, with a small standard-library HTTP proxy in front of it where a test
needs errors, delays or a count of the requests. Nothing leaves the loopback interface."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prism_plugin.cli import main
from prism_plugin.data.dataset_info import sharegpt_entry
from prism_plugin.data.images import data_url
from prism_plugin.data.openai_client import backoff_seconds, retry_after_seconds
from prism_plugin.data.records import load_align, load_prompts
from prism_plugin.data.teach import request_messages, teach
from prism_plugin.data.teach_journal import Journal
from prism_plugin.data.teach_outputs import verdict
from prism_plugin.layout import IMAGE_MARKER, SYSTEM_PROMPT, Segments
from tests.lf_runs import CLI as LF_CLI
from tests.lf_runs import llamafactory_train
from tests.testing_utils import REPO, lf_config

API_KEY = "teach-test-key-5b1f"
KEY_ENV = "PRISM_TEACH_TEST_KEY"
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def lf_api_server(model_dir: Path, log_path: Path) -> Iterator[str]:
    """``llamafactory-cli api`` serving ``model_dir`` (template prism_qwen3_vl) on a free loopback port, with
    ``API_KEY``; yields its base URL (``…/v1``) once ``/v1/models`` answers, and stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "API_HOST": LOOPBACK, "API_PORT": str(port), "API_KEY": API_KEY, "API_VERBOSE": "0",
           "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    args = [LF_CLI, "api", "--model_name_or_path", str(model_dir), "--template", "prism_qwen3_vl",
            "--infer_backend", "huggingface"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{LOOPBACK}:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {API_KEY}"})
            try:
                with _opener().open(request, timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llamafactory-cli api did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says


@pytest.fixture(scope="module")
def teacher(tiny_sft_run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny SFT policy (it often writes the PRISM layout) behind the OpenAI-style API."""
    with lf_api_server(tiny_sft_run[0], tmp_path_factory.mktemp("api") / "sft_api.log") as base:
        yield base


Rule = Callable[[bytes, int], "tuple[int, dict[str, str], bytes] | None"]


class Proxy:
    """A loopback HTTP proxy in front of the teacher: records every request (time, body) and, where ``rule``
    answers (status, headers, body) for a request body and how often that body was seen before, answers
    that instead of forwarding; ``delay`` slows every forwarded request."""

    def __init__(self, upstream: str, rule: Rule | None = None, delay: float = 0.0) -> None:
        self.upstream = upstream.removesuffix("/v1")
        self.rule, self.delay = rule, delay
        self.calls: list[list] = []  # [arrival time, body, status] per request, in order of arrival
        self.seen: Counter = Counter()
        self.active = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    digest = hashlib.sha1(body).hexdigest()
                    seen = proxy.seen[digest]
                    proxy.seen[digest] += 1
                    call = [time.monotonic(), body, None]  # the status is filled in when answered
                    proxy.calls.append(call)
                    proxy.active += 1
                try:
                    answer = proxy.rule(body, seen) if proxy.rule else None
                    if answer is None:
                        time.sleep(proxy.delay)
                        answer = proxy.forward(self.path, body, self.headers.get("Authorization"))
                    status, headers, payload = answer
                    call[2] = status
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed while waiting
                    pass
                finally:
                    with proxy.lock:
                        proxy.active -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, path: str, body: bytes, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
        request = urllib.request.Request(self.upstream + path, data=body, headers=headers, method="POST")
        try:
            with _opener().open(request, timeout=120) as response:
                return response.status, {}, response.read()
        except urllib.error.HTTPError as err:
            return err.code, {}, err.read()

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- data and runs


def write_questions(tiny_dir: Path, path: Path, rows: list[int], *, bytes_row: int | None = None,
                    no_answer_row: int | None = None, answer: str | None = None) -> None:
    """Rows ``rows`` (0-based) of the tiny RLVR questions into ``path`` (.jsonl, or .parquet where images are
    ``{"bytes", "path"}`` structs as Hugging Face datasets write them, row ``bytes_row`` carrying its image as
    bytes). Image paths stay relative to the tiny data folder (pass ``--image-dir``); row ``no_answer_row``
    has no answer; ``answer`` replaces every other answer."""
    source = [json.loads(line) for line in (tiny_dir / "data" / "rlvr.jsonl").read_text().splitlines()]
    out = []
    for i in rows:
        row = dict(source[i])
        if i == no_answer_row:
            row["answer"] = None
        elif answer is not None:
            row["answer"] = answer
        if path.suffix == ".parquet":
            image = row["images"][0]
            row["images"] = [{"bytes": (tiny_dir / "data" / image).read_bytes(), "path": None} if i == bytes_row
                             else {"bytes": None, "path": image}]
        out.append(row)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(out), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in out), encoding="utf-8")


def teach_args(data: Path, out: Path, base: str, *extra: str) -> list[str]:
    return ["data", "teach", "--data", str(data), "--out", str(out), "--api-base", base, "--model", "tiny-teacher",
            "--api-key-env", KEY_ENV, "--max-tokens", "128", "--temperature", "1.0", *extra]


def run_main(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
             key: str | None = API_KEY) -> tuple[int, str, str]:
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def journal_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def report_of(out: Path) -> dict:
    return json.loads((out / "teach_report.json").read_text())


def _cli_env() -> dict[str, str]:
    return {**os.environ, KEY_ENV: API_KEY, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def taught(teacher: str, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``teach`` run on the 16 tiny questions x 4 samples (row 1's image given as bytes, row 2 with no answer):
    the tiny SFT policy writes the layout in roughly one answer of six, so some are kept and most are not."""
    work = tmp_path_factory.mktemp("taught")
    data = work / "questions.parquet"
    write_questions(tiny_dir, data, list(range(16)), bytes_row=0, no_answer_row=1)
    out = work / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, API_KEY)
        code = main(teach_args(data, out, teacher, "--samples-per-prompt", "4", "--concurrency", "2",
                               "--image-dir", str(tiny_dir / "data")))
    return {"code": code, "data": data, "out": out, "records": load_prompts(
        data, teacher="ignored", media_dir=tiny_dir / "data").records}


def test_teach_writes_sft_align_and_report(taught: dict, tiny_dir: Path) -> None:
    out, records = taught["out"], {r.row: r for r in taught["records"]}
    assert taught["code"] == 0
    entries = journal_lines(out)
    keys = [(e["row"], e["sample"]) for e in entries]
    assert sorted(keys) == [(row, s) for row in range(1, 17) for s in range(4)]  # each key exactly once
    report = report_of(out)
    assert report["requests"] == 64 and report["journal_lines"] == 64 and report["answered_before"] == 0
    assert report["kept"] + sum(report["dropped"].values()) + report["pending"] == 64
    assert report["dropped"]["request_failed"] == 0 and report["pending"] == 0 and report["stopped"] is None
    assert report["usage"]["completion_tokens"] > 0

    # every verdict follows from the answer: kept ones are in the outputs, the others listed with their reason
    by_key = {(e["row"], e["sample"]): e for e in entries}
    expected = {key: verdict(e["text"], e["finish_reason"], records[key[0]].ground_truth, False)
                for key, e in by_key.items()}
    dropped = {(d["row"], d["sample"]): d for d in report["dropped_samples"]}
    assert {k for k, v in expected.items() if v != "kept"} == set(dropped)
    for key, item in dropped.items():
        assert item["reason"] == expected[key] and by_key[key]["text"].startswith(item["text"].removesuffix("…"))
    kept = sorted(k for k, v in expected.items() if v == "kept")
    assert report["kept"] == len(kept) >= 1

    align = load_align(out / "align.jsonl")  # the alignment stage's reader accepts every row
    assert [(r.teacher.caption, r.teacher.reasoning) for r in align.records] == [
        (s.caption, s.reasoning) for s in (Segments.from_response(by_key[k]["text"]) for k in kept)]
    raw = [json.loads(line) for line in (out / "align.jsonl").read_text().splitlines()]
    assert [(r["source_row"], r["sample"]) for r in raw] == kept
    for record, row in zip(align.records, raw, strict=True):
        source = records[row["source_row"]]
        assert record.prompt == source.prompt and record.ground_truth == source.ground_truth
        assert ("ground_truth" in row) == (row["source_row"] != 2)  # written only when known
        for image in row["images"]:
            assert Path(image).is_absolute() and Path(image).is_file()
        if row["source_row"] == 1:  # bytes: written once under out/images by content hash
            digest = hashlib.sha1(source.images[0]).hexdigest()
            assert row["images"] == [str((out / "images" / f"{digest}.png").resolve())]
        else:
            assert row["images"] == list(source.images)

    sft = json.loads((out / "sft.json").read_text())
    assert len(sft) == len(kept)
    for item, row, key in zip(sft, raw, kept, strict=True):
        system, user, assistant = item["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert system["content"] == SYSTEM_PROMPT
        assert user["content"] == records[key[0]].prompt and user["content"].count(IMAGE_MARKER) == 1
        assert assistant["content"] == Segments.from_response(by_key[key]["text"]).response
        assert item["images"] == row["images"]

    info = json.loads((out / "dataset_info.json").read_text())
    assert info["prism_teach_sft"] == sharegpt_entry(out / "sft.json")
    tiny_info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())["prism_tiny_sft"]
    assert {k: v for k, v in info["prism_teach_sft"].items() if k != "file_name"} == {
        k: v for k, v in tiny_info.items() if k != "file_name"}
    assert info["prism_teach_align"] == {"file_name": str((out / "align.jsonl").resolve()), "prism_kind": "align"}


def test_written_sft_set_trains_with_llamafactory(taught: dict, tiny_dir: Path, tmp_path: Path) -> None:
    """Stage 1 on the teacher's demonstrations: a 2-step ``llamafactory-cli train`` on the written dataset_info."""
    out = taught["out"]
    config = lf_config("sft", tiny_dir, tmp_path / "sft", dataset="prism_teach_sft", dataset_dir=str(out),
                       max_steps=2, logging_steps=1, plot_loss=False)
    proc = llamafactory_train(config, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    first = json.loads((out / "sft.json").read_text())[0]["messages"][2]["content"]
    assert first in log  # LLaMA-Factory's example dump shows a teacher answer
    assert json.loads((tmp_path / "sft" / "trainer_state.json").read_text())["global_step"] == 2


def test_require_correct_rejudges_the_journal_without_requests(taught: dict, tiny_dir: Path, tmp_path: Path,
                                                               capsys, monkeypatch) -> None:
    """Rejection sampling on ground truths none of the answers match: every kept answer becomes ``incorrect``;
    the journal holds every key, so nothing is sent (the API base is a port nobody listens on)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(taught["out"], out)
    before = report_of(taught["out"])
    data = tmp_path / "questions.parquet"
    write_questions(tiny_dir, data, list(range(16)), bytes_row=0, answer="987654")
    dead = f"http://{LOOPBACK}:{_free_port()}/v1"
    code, stdout, err = run_main(teach_args(data, out, dead, "--samples-per-prompt", "4",
                                            "--image-dir", str(tiny_dir / "data"), "--require-correct"),
                                 capsys, monkeypatch)
    report = report_of(out)
    assert code == 1 and report["attempts"] == 0 and report["answered_before"] == 64
    assert report["kept"] == 0 and report["dropped"]["incorrect"] == before["kept"]
    assert report["dropped"]["invalid_layout"] == before["dropped"]["invalid_layout"]
    assert err.strip().splitlines()[-1].startswith("prism-plugin data teach: error: no demonstration kept")
    assert "incorrect" in err.strip().splitlines()[-1]
    assert json.loads((out / "sft.json").read_text()) == [] and (out / "align.jsonl").read_text() == ""


# --------------------------------------------------------------------------- kill and resume


def test_kill_and_resume_neither_loses_nor_repeats(teacher: str, tiny_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, list(range(6)))
    records = load_prompts(data, teacher="ignored", media_dir=tiny_dir / "data").records
    marks = {r.row: data_url(r.images[0]).split(",", 1)[1][-64:] for r in records}
    assert len(set(marks.values())) == len(marks)

    def rows_requested(calls: list) -> Counter:
        return Counter(next(row for row, mark in marks.items() if mark.encode() in body) for _, body, _ in calls)

    out = tmp_path / "out"
    args = [sys.executable, "-m", "prism_plugin.cli", *teach_args(
        data, out, "", "--samples-per-prompt", "2", "--concurrency", "1", "--image-dir", str(tiny_dir / "data"))]
    with Proxy(teacher, delay=0.3) as proxy:
        args[args.index("--api-base") + 1] = proxy.base
        proc = subprocess.Popen(args, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        journal = out / "responses.jsonl"
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.read_bytes().count(b"\n") >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.communicate()
        while proxy.active:  # the request under way at the kill belongs to the first run
            time.sleep(0.02)
        raw = journal.read_bytes()
        answered = raw[: raw.rfind(b"\n") + 1].decode().splitlines()
        first_calls = list(proxy.calls)
        assert 3 <= len(answered) < 12
        # at most the one request under way at the kill was answered and not journaled
        assert len(answered) <= len(first_calls) <= len(answered) + 1
        with journal.open("ab") as handle:  # a torn write, as a kill in the middle of a line leaves it
            handle.write(b'{"row": 6, "sample": 1, "ques')
        done = Counter(json.loads(line)["row"] for line in answered)
        proxy.calls.clear()

        resumed = subprocess.run(args, env=_cli_env(), capture_output=True, text=True, timeout=300)
        second_calls = list(proxy.calls)

    assert resumed.returncode in (0, 1), resumed.stderr
    entries = journal_lines(out)
    keys = [(e["row"], e["sample"]) for e in entries]
    assert sorted(keys) == [(row, s) for row in range(1, 7) for s in range(2)]  # nothing lost, nothing twice
    assert [json.loads(line) for line in answered] == entries[: len(answered)]  # the answered lines are untouched
    # the resumed run asked exactly for the keys the journal lacked, each once
    assert len(second_calls) == 12 - len(answered)
    assert rows_requested(second_calls) == Counter({row: 2 - done[row] for row in range(1, 7) if done[row] < 2})
    report = report_of(out)
    assert report["answered_before"] == len(answered) and report["attempts"] == 12 - len(answered)
    assert report["journal_torn_line_removed"] == '{"row": 6, "sample": 1, "ques'
    assert "removed a torn last line" in resumed.stderr


def test_interrupt_journals_the_answers_under_way(teacher: str, tiny_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C: nothing new is sent, the requests under way are answered and journaled (they are paid for), the
    outputs are rebuilt, and the run exits 1 saying how to resume."""
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, list(range(8)))
    out = tmp_path / "out"
    with Proxy(teacher, delay=0.4) as proxy:
        args = [sys.executable, "-m", "prism_plugin.cli", *teach_args(
            data, out, proxy.base, "--samples-per-prompt", "2", "--concurrency", "2", "--image-dir",
            str(tiny_dir / "data"))]
        # A run started in the background (`cmd &`) ignores SIGINT, and children inherit an ignored signal: the
        # CLI starts with Python's own Ctrl-C handler here whichever way the test run itself was started.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(args, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        journal = out / "responses.jsonl"
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.read_bytes().count(b"\n") >= 2 and proxy.active):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        answered = [call for call in proxy.calls if call[2] == 200]
    assert proc.returncode == 1, err
    assert "stopped early: interrupted" in err.strip().splitlines()[-1] and "Traceback" not in err
    entries = journal_lines(out)
    assert len(entries) == len(answered) < 16  # every answer the server gave is in the journal
    report = report_of(out)
    assert report["stopped"] == "interrupted" and report["pending"] == 16 - len(entries)
    assert report["kept"] + sum(report["dropped"].values()) == len(entries)


# --------------------------------------------------------------------------- server errors


def test_retries_and_permanent_failures(teacher: str, tiny_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, list(range(6)))
    records = load_prompts(data, teacher="ignored", media_dir=tiny_dir / "data").records
    marks = {r.row: data_url(r.images[0]).split(",", 1)[1][-64:].encode() for r in records}
    failing, refused, throttled, flaky = 1, 2, 3, 4

    def rule(body: bytes, seen: int):
        if marks[failing] in body:
            return 500, {}, b'{"detail": "upstream exploded"}'
        if marks[refused] in body:
            return 400, {}, json.dumps({"error": {"message": "image too large"}}).encode()
        if marks[throttled] in body and seen == 0:
            return 429, {"Retry-After": "1"}, b'{"detail": "slow down"}'
        if marks[flaky] in body and seen < 2:
            return 503, {}, b""
        return None

    out = tmp_path / "out"
    with Proxy(teacher, rule) as proxy:
        report = teach(data, out, api_base=proxy.base, model="tiny-teacher", api_key=API_KEY, concurrency=3,
                       max_tokens=128, temperature=1.0, max_retries=2, backoff_base=0.05,
                       media_dir=tiny_dir / "data", progress=False)
        calls = list(proxy.calls)

    def attempts(row: int) -> list[tuple[float, int]]:
        return [(t, status) for t, body, status in calls if marks[row] in body]

    assert [s for _, s in attempts(failing)] == [500, 500, 500]  # 1 + max_retries, then given up
    assert [s for _, s in attempts(refused)] == [400]  # a 4xx is not retried
    (t429, s429), (t_ok, s_ok) = attempts(throttled)
    assert (s429, s_ok) == (429, 200) and t_ok - t429 >= 0.9  # Retry-After: 1 honoured
    assert [s for _, s in attempts(flaky)] == [503, 503, 200]
    assert report["retries"] == 2 + 1 + 2 and report["attempts"] == len(calls) == 3 + 1 + 2 + 3 + 2

    failed = {d["row"]: d for d in report["dropped_samples"] if d["reason"] == "request_failed"}
    assert set(failed) == {failing, refused} and report["dropped"]["request_failed"] == 2
    assert failed[failing]["status"] == 500 and "upstream exploded" in failed[failing]["error"]
    assert failed[failing]["attempts"] == 3 and "gave up after 3 attempts" in failed[failing]["error"]
    assert failed[refused]["status"] == 400 and "image too large" in failed[refused]["error"]
    assert failed[refused]["attempts"] == 1
    assert sorted(e["row"] for e in journal_lines(out)) == [3, 4, 5, 6]  # failures are not journaled
    assert report["stopped"] is None

    # a re-run sends only what failed
    with Proxy(teacher) as proxy:
        again = teach(data, out, api_base=proxy.base, model="tiny-teacher", api_key=API_KEY, max_tokens=128,
                      temperature=1.0, media_dir=tiny_dir / "data", progress=False)
        resent = list(proxy.calls)
    assert len(resent) == 2 and {row for row, m in marks.items() for _, body, _ in resent if m in body} == {
        failing, refused}
    assert again["dropped"]["request_failed"] == 0 and again["journal_lines"] == 6


def test_redirects_are_not_followed(tiny_dir: Path, tmp_path: Path) -> None:
    """Requests go to the given base URL only: a redirect is a final failure naming where it pointed."""
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0])
    elsewhere = f"http://{LOOPBACK}:9/v1/chat/completions"
    with Proxy(f"http://{LOOPBACK}:9", lambda body, seen: (307, {"Location": elsewhere}, b"")) as proxy:
        report = teach(data, tmp_path / "out", api_base=proxy.base, model="m", media_dir=tiny_dir / "data",
                       progress=False, backoff_base=0.01)
        calls = list(proxy.calls)
    (failed,) = report["dropped_samples"]
    assert len(calls) == 1 and failed["status"] == 307 and failed["attempts"] == 1
    assert f"redirected to {elsewhere!r}" in failed["error"]


def test_truncated_answers_are_dropped(teacher: str, tiny_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """``max_tokens`` 4 ends every answer early: finish reason ``length``, all ``truncated``, nothing kept."""
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0, 1, 2])
    out = tmp_path / "out"
    args = teach_args(data, out, teacher, "--image-dir", str(tiny_dir / "data"))
    args[args.index("--max-tokens") + 1] = "4"
    code, _, err = run_main(args, capsys, monkeypatch)
    assert code == 1 and "no demonstration kept" in err and "'truncated': 3" in err
    assert [e["finish_reason"] for e in journal_lines(out)] == ["length"] * 3
    assert report_of(out)["dropped"]["truncated"] == 3


@pytest.mark.llamafactory
def test_untrained_teacher_is_dropped_and_counted(tiny_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The untrained tiny policy does not write the layout: every answer is left out, by reason, exit 1."""
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0, 1, 2])
    out = tmp_path / "out"
    with lf_api_server(tiny_dir / "qwen3_vl_policy", tmp_path / "api.log") as base:
        args = teach_args(data, out, base, "--image-dir", str(tiny_dir / "data"), "--samples-per-prompt", "2")
        args[args.index("--max-tokens") + 1] = "24"
        code, stdout, err = run_main(args, capsys, monkeypatch)
    report = report_of(out)
    assert code == 1 and report["kept"] == 0 and report["requests"] == 6
    assert report["dropped"]["truncated"] + report["dropped"]["invalid_layout"] == 6
    reasons = Counter(d["reason"] for d in report["dropped_samples"])
    assert reasons == Counter({k: v for k, v in report["dropped"].items() if v})
    for entry in journal_lines(out):
        reason = "truncated" if entry["finish_reason"] == "length" else "invalid_layout"
        assert next(d for d in report["dropped_samples"]
                    if (d["row"], d["sample"]) == (entry["row"], entry["sample"]))["reason"] == reason
    assert json.loads(stdout.strip().splitlines()[-1])["kept"] == 0


# --------------------------------------------------------------------------- user mistakes


def _last_line(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_unreachable_server_is_counted_not_a_traceback(tiny_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0, 1])
    out = tmp_path / "out"
    dead = f"http://{LOOPBACK}:{_free_port()}/v1"
    code, _, err = run_main(teach_args(data, out, dead, "--image-dir", str(tiny_dir / "data"), "--max-retries", "1",
                                       "--retry-base-delay", "0.01"), capsys, monkeypatch)
    report = report_of(out)
    assert code == 1 and report["dropped"]["request_failed"] == 2 and report["retries"] == 2
    assert all(d["status"] is None and "refused" in d["error"].lower() for d in report["dropped_samples"])
    assert _last_line(err).startswith("prism-plugin data teach: error: no demonstration kept")
    assert not (out / "responses.jsonl").read_text()


def test_refused_key_stops_at_once_and_is_never_shown(teacher: str, tiny_dir: Path, tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, list(range(6)))
    out = tmp_path / "out"
    wrong = "sk-wrong-key-do-not-print-7d3e"
    code, stdout, err = run_main(teach_args(data, out, teacher, "--image-dir", str(tiny_dir / "data"),
                                            "--concurrency", "1"), capsys, monkeypatch, key=wrong)
    line = _last_line(err)
    assert code == 1 and "stopped early" in line and "HTTP 401" in line and "rerun the same command" in line
    report = report_of(out)
    assert report["attempts"] < 6 and report["pending"] >= 1  # it stopped instead of sending every request
    for text in (stdout, err, (out / "teach_report.json").read_text(), (out / "responses.jsonl").read_text()):
        assert wrong not in text and API_KEY not in text


def test_api_base_without_v1_says_so(teacher: str, tiny_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0])
    code, _, err = run_main(teach_args(data, tmp_path / "out", teacher.removesuffix("/v1"), "--image-dir",
                                       str(tiny_dir / "data")), capsys, monkeypatch)
    line = _last_line(err)
    assert code == 1 and "HTTP 404" in line and "/v1" in line


@pytest.mark.parametrize(
    ("base", "key", "message"),
    [
        ("ftp://127.0.0.1/v1", API_KEY, "--api-base must be an http:// or https:// URL"),
        ("127.0.0.1:8000/v1", API_KEY, "--api-base must be an http:// or https:// URL"),
        ("http://user:secret@127.0.0.1:9/v1", API_KEY, "--api-base must not carry credentials"),
        ("http://127.0.0.1:9/v1", None, f"environment variable {KEY_ENV} (named by --api-key-env) is not set"),
    ],
)
def test_user_mistakes_are_one_line(base: str, key: str | None, message: str, tiny_dir: Path, tmp_path: Path,
                                    capsys, monkeypatch) -> None:
    data = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, data, [0])
    code, _, err = run_main(teach_args(data, tmp_path / "out", base, "--image-dir", str(tiny_dir / "data")),
                            capsys, monkeypatch, key=key)
    line = _last_line(err)
    assert code == 1 and line.startswith("prism-plugin data teach: error: ") and message in line
    assert "secret" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_no_usable_rows(tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "questions.jsonl"
    data.write_text('{"prompt": "<image>two markers <image>", "images": []}\nnot json\n')
    code, _, err = run_main(teach_args(data, tmp_path / "out", "http://127.0.0.1:9/v1", "--skip-invalid"),
                            capsys, monkeypatch)
    assert code == 1 and "no usable rows (2 skipped; the first: " in _last_line(err)
    assert "row 1, field 'prompt': has 2 '<image>' markers" in _last_line(err)
    code, _, err = run_main(teach_args(data, tmp_path / "out", "http://127.0.0.1:9/v1"), capsys, monkeypatch)
    assert code == 1 and "row 1, field 'prompt'" in _last_line(err)


def test_resume_refuses_other_settings_or_changed_data(taught: dict, tiny_dir: Path, tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(taught["out"], out)
    dead = f"http://{LOOPBACK}:{_free_port()}/v1"
    args = teach_args(taught["data"], out, dead, "--samples-per-prompt", "4", "--image-dir", str(tiny_dir / "data"))
    args[args.index("--max-tokens") + 1] = "64"
    code, _, err = run_main(args, capsys, monkeypatch)
    assert code == 1 and "answered with max_tokens=128 (now 64)" in _last_line(err)
    changed = tmp_path / "questions.jsonl"
    write_questions(tiny_dir, changed, [1, 0, *range(2, 16)])  # rows 1 and 2 swapped
    code, _, err = run_main(teach_args(changed, out, dead, "--image-dir", str(tiny_dir / "data")), capsys, monkeypatch)
    line = _last_line(err)
    assert code == 1 and "answers another question than" in line and ("row 1 " in line or "row 2 " in line)


# --------------------------------------------------------------------------- pieces


def test_request_messages_put_images_at_their_markers(tiny_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    bmp = tmp_path / "a.bmp"
    Image.open(tiny_dir / "data" / "images" / "0001.png").save(bmp)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"prompt": "Compare <image> with <image>: which has more?",
                                "images": [str(tiny_dir / "data" / "images" / "0000.png"), str(bmp)]}) + "\n")
    (record,) = load_prompts(data, teacher="ignored").records
    system, user = request_messages(record)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    kinds = [item["type"] for item in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    first, second = user["content"][1]["image_url"]["url"], user["content"][3]["image_url"]["url"]
    png = (tiny_dir / "data" / "images" / "0000.png").read_bytes()
    assert first == "data:image/png;base64," + base64.b64encode(png).decode()  # PNG as it is
    assert second.startswith("data:image/png;base64,")  # BMP re-encoded as PNG
    import io

    decoded = Image.open(io.BytesIO(base64.b64decode(second.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.size == Image.open(bmp).size
    assert [user["content"][i]["text"] for i in (0, 2, 4)] == ["Compare ", " with ", ": which has more?"]


def test_backoff_and_retry_after() -> None:
    import random
    from email.utils import formatdate

    rng = random.Random(0)
    for retry, step in [(1, 1.0), (2, 2.0), (3, 4.0), (8, 60.0)]:
        delays = [backoff_seconds(retry, 1.0, 60.0, rng=rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step and max(delays) - min(delays) > step / 4
    assert backoff_seconds(1, 1.0, 60.0, retry_after=7.0, rng=rng) == 7.0
    assert backoff_seconds(1, 1.0, 60.0, retry_after=10_000.0, rng=rng) == 600.0
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = time.time()
    assert 9.0 <= retry_after_seconds(formatdate(now + 10, usegmt=True), now=now) <= 10.0


def test_journal_cuts_a_torn_line_and_refuses_a_broken_one(tmp_path: Path) -> None:
    from prism_plugin.errors import UserError

    path = tmp_path / "responses.jsonl"
    path.write_bytes(b'{"row": 1, "sample": 0, "text": "a"}\n{"row": 2, "sam')
    with Journal.open(path) as journal:
        assert list(journal.entries) == [(1, 0)] and journal.repaired == '{"row": 2, "sam'
        journal.append({"row": 2, "sample": 0, "text": "b"})
    assert path.read_text().splitlines()[1] == '{"row": 2, "sample": 0, "text": "b"}'
    with Journal.open(path) as journal:
        assert list(journal.entries) == [(1, 0), (2, 0)] and journal.repaired is None
        with pytest.raises(UserError, match="in use by another teach run"):
            Journal.open(path)
    path.write_text('{"row": 1, "sample": 0}\nnot json\n')
    with pytest.raises(UserError, match="line 2: not a journal entry"):
        Journal.open(path)


def test_outputs_from_a_journal(tiny_dir: Path, tmp_path: Path) -> None:
    """The writer on its own (no server): bytes images land once under ``images/`` by content hash, a row with
    no ground truth writes none, ``require_correct`` keeps a row it cannot check (counted as unverified)."""
    from prism_plugin.data.teach_outputs import write_outputs

    data = tmp_path / "q.parquet"
    write_questions(tiny_dir, data, [0, 1, 2], bytes_row=0, no_answer_row=1)
    records = load_prompts(data, teacher="ignored", media_dir=tiny_dir / "data").records
    answers = {r.row: f"<caption> c{r.row} </caption>\n<think> t </think>\n<answer> {r.ground_truth} </answer>"
               for r in records}
    entries = {(r.row, s): {"text": answers[r.row], "finish_reason": "stop", "usage": {"completion_tokens": 5}}
               for r in records for s in range(2)}
    del entries[(3, 1)]
    failures = {(3, 1): {"reason": "request_failed", "status": 500, "error": "HTTP 500"}}
    out = tmp_path / "out"
    report = write_outputs(out, records, 2, entries, failures, require_correct=True)
    assert report["kept"] == 5 and report["kept_unverified"] == 2 and report["dropped"]["request_failed"] == 1
    assert report["usage"] == {"completion_tokens": 25}
    assert report["dropped_samples"] == [{"row": 3, "sample": 1, **failures[(3, 1)]}]
    digest = hashlib.sha1(records[0].images[0]).hexdigest()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{digest}.png"]
    rows = [json.loads(line) for line in (out / "align.jsonl").read_text().splitlines()]
    assert [(r["source_row"], r["sample"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    assert rows[0]["images"] == [str((out / "images" / f"{digest}.png").resolve())]
    assert rows[2]["images"] == list(records[1].images) and "ground_truth" not in rows[2]
    assert rows[4]["ground_truth"] == records[2].ground_truth
    assert [r.teacher.caption for r in load_align(out / "align.jsonl").records] == [
        "<caption> c1 </caption>"] * 2 + ["<caption> c2 </caption>"] * 2 + ["<caption> c3 </caption>"]


def test_verdicts() -> None:
    good = "<caption> red 2 </caption>\n<think> 2 + 1 = 3 </think>\n<answer> 3 </answer>"
    assert verdict(good, "stop", "3", True) == "kept"
    assert verdict(good, "stop", "4", True) == "incorrect"
    assert verdict(good, "stop", "4", False) == "kept"
    assert verdict(good, "stop", None, True) == "kept"
    assert verdict(good, "length", "3", True) == "truncated"
    assert verdict("<caption> red 2 </caption> 3", "stop", "3", True) == "invalid_layout"
