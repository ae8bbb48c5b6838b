"""The demo's report page: results from results.json files, curves as pictures, renders in Chromium."""
import json

from reid.report import plot_cmc, plot_losses, read_loss_log, results_rows, write_report
from tests.browser import img_srcs, is_blank, screenshot



def test_report_page_from_logs_and_results(tmp_path):
    (tmp_path / "loss_log.txt").write_text(
        "================ Training Loss (x) ================\n"
        "(epoch: 1, iters: 8, time: 0.050) G_r: 0.900 D_i: 0.700\n"
        "(epoch: 1, iters: 16, time: 0.050) G_r: 0.600 D_i: 0.650\n")
    series = read_loss_log(str(tmp_path / "loss_log.txt"))
    assert series == {"G_r": [0.9, 0.6], "D_i": [0.7, 0.65]}
    metrics = {"mAP": 0.5, "top1": 0.25, "top5": 0.75, "top10": 1.0, "cmc": [0.25, 0.5, 0.75, 0.75, 0.75]}
    (tmp_path / "results.json").write_text(json.dumps(
        {"results": {"openreid": {"first_stage": metrics, "second_stage": metrics}}}))
    rows = results_rows({"E": str(tmp_path / "results.json")})
    assert rows[0] == ["E", "openreid", "first stage", "50.0", "25.0", "75.0", "100.0"]
    plot_losses(series, str(tmp_path / "losses.png"), "losses")
    plot_cmc({"E": metrics["cmc"]}, str(tmp_path / "cmc.png"), "CMC")
    page = write_report(str(tmp_path), "report", rows, [("CMC", "cmc.png"), ("losses", "losses.png")], [])
    assert img_srcs(open(page).read()) == ["cmc.png", "losses.png"]
    assert not is_blank(screenshot(page, tmp_path / "shot.png"))
