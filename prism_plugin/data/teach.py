"""Teacher demonstrations from a black-box teacher: ``prism-plugin data teach``.

PRISM's teacher is a model behind an API, with no logits (Wang et al. 2026, §3): its demonstrations are
the SFT data of Stage 1, the alignment set's ``teacher_caption`` / ``teacher_cot`` of Stage 2, and the
teacher side of the discriminator's warm-up pairs. :func:`teach` asks any OpenAI-compatible
chat-completions endpoint for them: each question row (read by the one row parser,
:func:`prism_plugin.data.records.load_prompts`) is sent ``samples_per_prompt`` times with the PRISM
system prompt, its ``<image>`` markers turned into ``data:`` URL image items in order
(:func:`prism_plugin.chat.user_content`), a bounded number of requests at once.

Resumable: every answer is appended to ``responses.jsonl`` (:mod:`prism_plugin.data.teach_journal`) the
moment it arrives, keyed by (row, sample); the outputs are rebuilt from that journal
(:mod:`prism_plugin.data.teach_outputs`), and a re-run with the same ``out_dir`` sends only the keys the
journal lacks — failed requests included, so a re-run also retries what failed. The journal records the
model, ``max_tokens`` and ``temperature``, and a fingerprint of each question; a re-run with other
settings or a changed data file is refused rather than mixing two teachers or two datasets.

There is no separate teacher file for the warm-up pairs: ``align.jsonl`` is the teacher side, and
``prism-plugin data make-pairs --data OUT/align.jsonl`` samples the student beside each of its rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import lru_cache
from pathlib import Path
from typing import Any

from prism_plugin.chat import user_content
from prism_plugin.data.images import data_url
from prism_plugin.data.openai_client import ChatClient, Completion, RequestFailed
from prism_plugin.data.records import DatasetRowError, PromptRecord, load_prompts
from prism_plugin.data.teach_journal import Journal, Key
from prism_plugin.data.teach_outputs import verdict, write_outputs
from prism_plugin.errors import UserError
from prism_plugin.layout import SYSTEM_PROMPT

JOURNAL_FILE = "responses.jsonl"
FATAL_STATUSES = {401: "the key was refused", 403: "access is forbidden",
                  404: "no such endpoint or model (most servers want --api-base ending in /v1)"}
"""HTTP statuses that no other request would escape: the run stops at the first one."""
MAX_CONSECUTIVE_FAILURES = 20
"""Requests in a row that fail for good (after their retries) before the run stops: the server is gone."""
SETTINGS = ("model", "max_tokens", "temperature")
"""Request settings a journal's answers must share with a re-run."""


def request_messages(record: PromptRecord) -> list[dict[str, Any]]:
    """The chat messages for one question: the PRISM system prompt, then the user turn with each ``<image>``
    marker as an OpenAI ``image_url`` item carrying the image as a ``data:`` URL, in order."""
    images = iter(record.images)
    content = []
    for item in user_content(record.prompt, len(record.images)):
        if item["type"] == "image":
            content.append({"type": "image_url", "image_url": {"url": _cached_data_url(next(images))}})
        else:
            content.append(item)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


@lru_cache(maxsize=64)
def _cached_data_url(image: str | bytes) -> str:
    """One encoding per image while its samples are in flight."""
    return data_url(image)


def fingerprint(record: PromptRecord) -> str:
    """A short hash of a question (its prompt, image file names or bytes): what a journal line answered."""
    images = [hashlib.sha1(im).hexdigest() if isinstance(im, bytes) else Path(im).name for im in record.images]
    return hashlib.sha1(json.dumps([record.prompt, images]).encode("utf-8")).hexdigest()[:16]


def _check_journal(journal: Journal, records: dict[int, PromptRecord], settings: dict[str, Any],
                   data: Path) -> None:
    """Refuse a journal written with other request settings, or for other questions at the same rows."""
    for (row, _), entry in journal.entries.items():
        differs = [f"{name}={entry.get(name)!r} (now {settings[name]!r})" for name in SETTINGS
                   if entry.get(name) != settings[name]]
        if differs:
            raise UserError(f"{journal.path}, line {entry['line']}: answered with {', '.join(differs)}; "
                            "rerun with the same settings, or use a new --out")
        record = records.get(row)
        if record is not None and entry.get("question") != fingerprint(record):
            raise UserError(f"{journal.path}, line {entry['line']}: answers another question than {data} "
                            f"row {row} holds now (the data file changed); use a new --out")


def teach(
    data: str | Path,
    out_dir: str | Path,
    *,
    api_base: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 4,
    samples_per_prompt: int = 1,
    max_tokens: int | None = 2048,
    temperature: float | None = None,
    timeout: float = 120.0,
    max_retries: int = 5,
    backoff_base: float = 1.0,
    require_correct: bool = False,
    media_dir: str | Path | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
) -> dict[str, Any]:
    """Ask the teacher for ``samples_per_prompt`` answers to each question row of ``data``; write the SFT set,
    the alignment rows and the report into ``out_dir``; return the report (see
    :func:`prism_plugin.data.teach_outputs.write_outputs`). ``report["stopped"]`` says why a run stopped early
    (a fatal HTTP status, a server gone, an interrupt); it is None when every request was answered or failed
    on its own. ``temperature`` None leaves it to the server."""
    if concurrency < 1 or samples_per_prompt < 1 or (max_tokens is not None and max_tokens < 1):
        raise UserError("--concurrency, --samples-per-prompt and --max-tokens must be at least 1")
    if max_retries < 0 or timeout <= 0 or backoff_base < 0:
        raise UserError("--max-retries and --retry-base-delay must be >= 0 and --timeout > 0")
    start = time.perf_counter()
    client = ChatClient(api_base, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
                        backoff_base=backoff_base)
    try:
        loaded = load_prompts(data, teacher="ignored", skip_invalid=skip_invalid, media_dir=media_dir)
    except DatasetRowError:
        raise
    except ValueError as err:  # no usable rows, an unknown file format
        raise UserError(str(err)) from None
    records = {record.row: record for record in loaded.records}
    settings = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    out_dir = Path(out_dir)
    failures: dict[Key, dict[str, Any]] = {}
    with Journal.open(out_dir / JOURNAL_FILE) as journal:
        _check_journal(journal, records, settings, Path(data))
        keys = [(row, sample) for row in records for sample in range(samples_per_prompt)]
        todo = deque(key for key in keys if key not in journal.entries)
        resumed = len(keys) - len(todo)
        stopped = _run(client, journal, records, todo, settings, failures, concurrency, require_correct,
                       progress, resumed, len(keys), max_consecutive_failures)
        extra = {
            "data": str(Path(data).resolve()), "api_base": api_base, "model": model,
            "samples_per_prompt": samples_per_prompt, "max_tokens": max_tokens, "temperature": temperature,
            "rows_in": len(loaded.records) + len(loaded.skipped), "rows_used": len(loaded.records),
            "rows_skipped": [str(err) for err in loaded.skipped],
            "answered_before": resumed, "attempts": client.attempts, "retries": client.retries,
            "journal": str(journal.path.resolve()), "journal_lines": len(journal.entries),
            "journal_torn_line_removed": journal.repaired, "stopped": stopped,
            "seconds": round(time.perf_counter() - start, 2),
        }
        return write_outputs(out_dir, loaded.records, samples_per_prompt, journal.entries, failures,
                             require_correct, extra)


def _ask(client: ChatClient, record: PromptRecord, max_tokens: int | None, temperature: float | None) -> Completion:
    return client.complete(request_messages(record), max_tokens=max_tokens, temperature=temperature)


def _run(client: ChatClient, journal: Journal, records: dict[int, PromptRecord], todo: deque,
         settings: dict[str, Any], failures: dict[Key, dict[str, Any]], concurrency: int, require_correct: bool,
         progress: bool, done_before: int, total: int, max_consecutive_failures: int) -> str | None:
    """Send the ``todo`` keys, ``concurrency`` at a time; journal each answer, note each failure; return why
    the run stopped early, or None."""
    from tqdm.auto import tqdm

    counts: Counter = Counter()
    bar = tqdm(total=total, initial=done_before, desc="teach", unit="req", disable=not progress)
    in_flight: dict[Future, Key] = {}
    stopped: str | None = None
    consecutive = 0
    shown = [""]

    def show() -> None:
        dropped = ",".join(f"{reason}={n}" for reason, n in sorted(counts.items()) if reason != "kept")
        text = f"sent={client.attempts} kept={counts['kept']} dropped[{dropped}] retries={client.retries}"
        if text != shown[0]:
            shown[0] = text
            bar.set_postfix_str(text)

    def finish(future: Future, key: Key) -> None:
        nonlocal stopped, consecutive
        record = records[key[0]]
        try:
            answer = future.result()
        except RequestFailed as err:
            failures[key] = {"reason": "request_failed", "status": err.status, "error": err.message,
                             "attempts": err.attempts}
            counts["request_failed"] += 1
            consecutive += 1
            if err.status in FATAL_STATUSES and stopped is None:
                stopped = f"the server answered {err.message} ({FATAL_STATUSES[err.status]}) at {client.endpoint}"
            elif consecutive >= max_consecutive_failures and stopped is None:
                stopped = f"{consecutive} requests in a row failed (last: {err.message}) at {client.endpoint}"
        except DatasetRowError as err:
            failures[key] = {"reason": "bad_image", "error": str(err.at(None, key[0]))}
            counts["bad_image"] += 1
        else:
            consecutive = 0
            journal.append({"row": key[0], "sample": key[1], "question": fingerprint(record), **settings,
                            "text": answer.text, "finish_reason": answer.finish_reason,
                            "attempts": answer.attempts, "usage": answer.usage})
            counts[verdict(answer.text, answer.finish_reason, record.ground_truth, require_correct)] += 1
        bar.update(1)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teach") as pool:
        try:
            while todo or in_flight:
                while todo and stopped is None and len(in_flight) < 2 * concurrency:
                    key = todo.popleft()
                    future = pool.submit(_ask, client, records[key[0]], settings["max_tokens"],
                                         settings["temperature"])
                    in_flight[future] = key
                if stopped is not None:  # leave the queued requests unsent; finish those under way
                    for future in [f for f in in_flight if f.cancel()]:
                        del in_flight[future]
                if not in_flight:
                    break
                done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(future, in_flight.pop(future))
                show()
        except KeyboardInterrupt:
            stopped = "interrupted"
            for future in [f for f in in_flight if f.cancel()]:
                del in_flight[future]
            for future in list(in_flight):  # answers already paid for are journaled before stopping
                wait([future])
                finish(future, in_flight.pop(future))
    bar.close()
    return stopped


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its per-sample list (one JSON line for the terminal)."""
    return {key: value for key, value in report.items() if key not in ("dropped_samples", "rows_skipped")} | {
        "rows_skipped": len(report["rows_skipped"])}


def details(report: dict[str, Any], limit: int = 20) -> str:
    """Readable lines for skipped input rows and left-out samples (the first ``limit`` of each)."""
    lines = [f"input row skipped: {err}" for err in report["rows_skipped"][:limit]]
    if len(report["rows_skipped"]) > limit:
        lines.append(f"… {len(report['rows_skipped']) - limit} more input rows skipped")
    if report.get("journal_torn_line_removed"):
        lines.append(f"removed a torn last line from {report['journal']} (that request was sent again)")
    for item in report["dropped_samples"][:limit]:
        what = item.get("error") or (item.get("text") or "").replace("\n", " ")
        status = f" HTTP {item['status']}" if item.get("status") else ""
        lines.append(f"row {item['row']} sample {item['sample']}: {item['reason']}{status}: "
                     f"{what[:100]}{'…' if len(what) > 100 else ''}")
    if len(report["dropped_samples"]) > limit:
        lines.append(f"… {len(report['dropped_samples']) - limit} more samples left out (see teach_report.json)")
    return "\n".join(lines)
