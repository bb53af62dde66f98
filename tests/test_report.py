"""snakemake --report: the dataset, training and evaluation in one page that shows and plays."""

from __future__ import annotations

import asyncio
import shutil
import zipfile

from browser import in_browser
from conftest import snakemake

# In the report: render every PNG it holds, and decode every <audio> of the pages it holds
# (the listening page, its audio inside), with the browser's own decoders.
CHECK_REPORT = """(async () => {
  const out = {categories: Object.keys(categories), images: {}, audio: []};
  for (const [path, r] of Object.entries(results)) {
    if (r.mime_type === 'image/png') {
      const img = new Image();
      img.src = r.data_uri;
      await img.decode();
      out.images[path] = img.naturalWidth;
    } else if (r.mime_type === 'text/html') {
      const page = await (await fetch(r.data_uri)).text();
      const doc = new DOMParser().parseFromString(page, 'text/html');
      const ctx = new OfflineAudioContext(1, 1, 24000);
      for (const a of doc.querySelectorAll('audio')) {
        const audio = await ctx.decodeAudioData(await (await fetch(a.src)).arrayBuffer());
        out.audio.push({page: path, seconds: audio.duration});
      }
    }
  }
  return out;
})()"""
PLOTS = ["results/shards/plots/dataset.png", "results/shards/plots/clips_per_track.png",
         "results/shards/plots/rms.png", "results/shards/plots/durations.png",
         "results/train/loss.png"]


def test_the_report_shows_the_plots_and_plays_the_examples(done, tmp_path):
    snakemake(done, "--report", "results/report.html")
    snakemake(done, "--report", "results/report.zip")
    assert zipfile.ZipFile(done / "results/report.zip").testzip() is None
    report = done / "results/report.html"
    shown = asyncio.run(in_browser(shutil.which("chromium"), report.as_uri(), CHECK_REPORT,
                                   tmp_path))
    assert sorted(shown["categories"]) == ["1. Dataset", "2. Training", "3. Evaluation"], shown
    assert sorted(shown["images"]) == sorted(PLOTS) and min(shown["images"].values()) > 300
    listen = [a for a in shown["audio"] if a["page"] == "results/evaluate/listen.html"]
    assert len(listen) >= 1 and all(a["seconds"] > 1 for a in listen), shown["audio"]
