"""The end of a run: failed jobs named with the start of their reason."""

from soloist.runlog import explain_failures, failed_jobs, reason

# The shape of a Snakemake 9 run log around a failed job (copied from a real one).
RUN_LOG = """Finished jobid: 3 (Rule: ingest)
Error in rule separate:
    message: Separating batch b3 into context and target
    jobid: 7
    input: results/ingest/b3/audio, results/ingest/b3/info
    output: results/separate/b3
    log: {log} (check log file(s) for error details)
    wildcards: batch=b3
Logfile {log}:
================================================================================
"""


def test_a_failed_batch_is_named_with_its_tracks_and_reason(tmp_path):
    log = tmp_path / "separate.log"
    log.write_text("2026-12-03 12:07:04,077 INFO soloist.separate: batches of 1\n"
                   "2026-12-03 12:07:05,123 CRITICAL soloist: MemoryError: out of memory\n"
                   "Traceback (most recent call last):\n"
                   '  File "x.py", line 1, in <module>\n'
                   "2026-12-03 12:07:05,200 INFO soloist.separate: never reached\n")
    run_log = tmp_path / "run.log"
    run_log.write_text(RUN_LOG.format(log=log))
    assert failed_jobs(run_log.read_text()) == \
        [{"rule": "separate", "wildcards": "batch=b3", "output": "results/separate/b3",
          "log": str(log)}]
    assert reason(log) == ["soloist: MemoryError: out of memory",
                           "Traceback (most recent call last):",
                           '  File "x.py", line 1, in <module>']
    text = explain_failures([str(run_log)], {"b3": ["gig1", "gig2"]}.get)
    assert "- separate [batch=b3 (tracks gig1, gig2)]:" in text
    assert "    soloist: MemoryError: out of memory" in text and f"whole log: {log}" in text


def test_a_log_without_an_error_record_gives_its_last_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(20)))
    assert reason(log)[-1] == "line 19" and len(reason(log)) == 8
    assert reason(tmp_path / "none.log") == ["(no log file)"]


def test_a_job_started_between_two_failures_is_not_read_as_theirs():
    # as Snakemake 9 wrote it: the sheet job starts right after the first failure's log
    run_log = """Error in rule fetch_weights:
    message: None
    jobid: 5
    output: resources/weights/pretrained/demucs/htdemucs_6s.json
    log: results/logs/fetch_weights/demucs.log (check log file(s) for error details)
Logfile results/logs/fetch_weights/demucs.log:
================================================================================
Execute 1 jobs...
[Fri Dec  4 22:48:56 2026]
localrule sheet:
    output: results/sheet/tracks.tsv
    log: results/logs/sheet/sheet.log
    jobid: 1
Error in rule fetch_weights:
    message: None
    jobid: 7
    output: resources/weights/pretrained/codec/encodec_24khz.json
    log: results/logs/fetch_weights/codec.log (check log file(s) for error details)
"""
    assert [(j["output"], j["log"]) for j in failed_jobs(run_log)] == [
        ("resources/weights/pretrained/demucs/htdemucs_6s.json",
         "results/logs/fetch_weights/demucs.log"),
        ("resources/weights/pretrained/codec/encodec_24khz.json",
         "results/logs/fetch_weights/codec.log")]
