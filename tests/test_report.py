"""The demo's report page: results from results.json files, curves as pictures, renders in Chromium."""
import json

from reid.report import Section, compare_results, plot_cmc, plot_losses, read_loss_log, results_rows, write_report
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
        {"results": {"openreid": {"first_stage": metrics, "second_stage": metrics}},
         "chance": {"openreid": {"mAP": 0.0412, "top1": 0.02}}}))
    (tmp_path / "old.json").write_text(json.dumps({"results": {"official": {"first_stage": metrics}}}))
    rows = results_rows({"E": str(tmp_path / "results.json"), "old": str(tmp_path / "old.json")})
    assert rows[0] == ["E", "openreid", "first stage", "50.0", "4.1", "25.0", "2.0", "75.0", "100.0"]
    assert rows[2] == ["old", "official", "first stage", "50.0", "-", "25.0", "-", "75.0", "100.0"]
    plot_losses(series, str(tmp_path / "losses.png"), "losses")
    plot_cmc({"E": metrics["cmc"]}, str(tmp_path / "cmc.png"), "CMC")
    page = write_report(str(tmp_path), "report", rows, [("CMC", "cmc.png"), ("losses", "losses.png")], [])
    assert img_srcs(open(page).read()) == ["cmc.png", "losses.png"]
    assert not is_blank(screenshot(page, tmp_path / "shot.png"))


def _results(map_open, map_official=0.1):
    metrics = lambda m: {"mAP": m}  # noqa: E731
    return {"openreid": {"first_stage": metrics(0.05), "second_stage": metrics(map_open)},
            "official": {"first_stage": metrics(0.05), "second_stage": metrics(map_official)}}


def test_comparison_sentence_says_who_wins_with_both_numbers():
    worse = compare_results(("Stage I", _results(0.229)), ("Stage III", _results(0.221)))
    assert worse == ("In this run Stage III does not beat Stage I: 22.1 % against 22.9 % "
                     "(second stage mAP, open-reid protocol).")
    better = compare_results(("Stage I", _results(0.2, 0.30)), ("Stage III", _results(0.1, 0.31)),
                             protocol="official")
    assert better == "In this run Stage III beats Stage I: 31.0 % against 30.0 % (second stage mAP, official protocol)."
    # Equal to the printed digit is not a win.
    tie = compare_results(("A", _results(0.2501)), ("B", _results(0.2504)))
    assert tie.startswith("In this run B does not beat A: 25.0 % against 25.0 %")


def test_report_sections_follow_the_results_table(tmp_path):
    plot_cmc({"E": [0.25, 0.5]}, str(tmp_path / "grid.png"), "CMC")
    section = Section("What Stage II learned", notes=["held out"], header=("predictor", "L1", "SSIM"),
                      rows=[["copy source", "0.3000", "0.1000"]], images=[("grid", "grid.png")])
    page = open(write_report(str(tmp_path), "r", [["E", "openreid", "first stage", "1", "0", "2", "0", "3", "4"]], [], [],
                             results_notes=["Stage III does not beat Stage I."], sections=[section])).read()
    order = [page.index(x) for x in ("Results (percent)", "Stage III does not beat Stage I.",
                                     "What Stage II learned", "held out", "<th>SSIM</th>", "<td>0.3000</td>")]
    assert order == sorted(order)
    assert img_srcs(page) == ["grid.png"]
