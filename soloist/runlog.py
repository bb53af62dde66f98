"""What the end of a Snakemake run says: which jobs failed and why, or where the results are.

Snakemake's own last words on a failure are "At least one job did not complete
successfully"; the reason is in the job's log, pages up or in a file. The workflow's
``onerror`` handler prints ``explain_failures`` instead, read from Snakemake's run log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from soloist.io import RANDOM_WARNING

# "2026-12-03 12:07:04,123 ERROR soloist.fetch_weights: message" (io.setup_logging)
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")
REASON_LINES = 8


def failed_jobs(run_log: str) -> list[dict]:
    """The ``Error in rule`` blocks of a Snakemake run log: rule, wildcards, output, log."""
    jobs = []
    for block in re.split(r"^Error in rule ", run_log, flags=re.M)[1:]:
        rule, _, body = block.partition(":\n")
        fields = {}
        for line in body.splitlines():  # its own fields: the next job's may follow at once
            field = re.match(r"^    (\w+): (.*)$", line)
            if not field:
                break
            fields.setdefault(field[1], field[2])
        log = fields.get("log", "").removesuffix(" (check log file(s) for error details)")
        jobs.append({"rule": rule.strip(), "wildcards": fields.get("wildcards", ""),
                     "output": fields.get("output", ""),
                     "log": log.split(", ")[0] if log else None})
    return jobs


def reason(log_file: str | os.PathLike | None) -> list[str]:
    """The first error record of a job's log with the lines it continues on (a message, a
    traceback), else the log's last lines."""
    if not log_file or not Path(log_file).is_file():
        return ["(no log file)"]
    lines = Path(log_file).read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = RECORD.match(line)
        if m and m["level"] in ("ERROR", "CRITICAL"):
            end = next((j for j in range(i + 1, len(lines)) if RECORD.match(lines[j])),
                       len(lines))
            return [RECORD.sub("", line, count=1)] + lines[i + 1:end][:REASON_LINES - 1]
    return lines[-REASON_LINES:] or ["(empty log)"]


def explain_failures(run_logs: list[str], tracks_of: Callable[[str], list[str]]) -> str:
    """A summary of every failed job of the run: rule, tracks of its batch (``tracks_of``
    maps a batch id to them), the start of the reason and where the whole log is."""
    text = "".join(Path(p).read_text(errors="replace") for p in run_logs if Path(p).is_file())
    jobs = failed_jobs(text)
    if not jobs:
        return ""
    out = [f"soloist: {len(jobs)} job(s) failed:"]
    for job in jobs:
        where = job["wildcards"] or job["output"]
        batch = re.search(r"batch=(b\d+)", where)
        if batch:
            where += f" (tracks {', '.join(tracks_of(batch[1])) or 'none'})"
        out.append(f"- {job['rule']}{f' [{where}]' if where else ''}:")
        out += [f"    {line}" for line in reason(job["log"])]
        if job["log"]:
            out.append(f"    whole log: {job['log']}")
    return "\n".join(out)


def banner(random: bool, report: str | None) -> str:
    """The last lines of a successful run: where to look, and loudly whether the weights
    were random."""
    lines = ["soloist: done. Results in results/ (README: What you get): shards in",
             "results/shards, the model in results/train, the listening page",
             "results/evaluate/index.html, failed tracks in results/failures.tsv."]
    if report:
        lines.append(f"Report: {report}")
    if random:
        rule = "!" * 78
        lines = [rule, f"!! {RANDOM_WARNING}", rule, *lines, rule]
    return "\n".join(lines)
