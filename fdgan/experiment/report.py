"""The experiment's outputs: the printed tables, ``results.json`` and the results page (dominate)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import dominate
from dominate import tags

from reid.models.pretrained import describe
from reid.utils.html import url_for
from reid.utils.osutils import atomic_write_text, write_json

Table = Tuple[List[str], List[List[str]]]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def tables(results: Dict[str, Any]) -> Dict[str, Table]:
    """The three answers (and the ablation) as titled tables of strings."""
    q1, q2, q3 = results["q1_generation"], results["q2_pose_invariance"], results["q3_reid"]
    gen_rows = [[name, f"{s['L1']:.4f}", f"{s['SSIM']:.4f}"] for name, s in q1["baselines"].items()]
    gen_rows += [[f"G, Stage II epoch {e['epoch']}", f"{e['L1']:.4f}", f"{e['SSIM']:.4f}"] for e in q1["epochs"]]
    inputs = q1["inputs"]["mean"]
    input_rows = [[f"G after {g}", *(f"{v[k]:.4f}" for k in ("identity", "pose", "noise", "real persons"))]
                  for g, v in inputs.items()]
    pose_rows = []
    for model, parts in q2["mean"].items():
        pose_rows.append([model, _pct(parts["similar"]["mAP"]), _pct(parts["different"]["mAP"]),
                          _signed(parts["gap"]["mAP"]), _pct(parts["similar"]["top1"]),
                          _pct(parts["different"]["top1"]), _signed(parts["gap"]["top1"])])
    reid_rows = []
    for r in q3["rows"]:
        reid_rows.append([r["protocol"], r["stage"].replace("_", " "), r["metric"], _pct(r["chance"]),
                          f"{_pct(r['first_mean'])} ± {_pct(r['first_std'])}",
                          f"{_pct(r['second_mean'])} ± {_pct(r['second_std'])}",
                          " ".join(_signed(d) for d in r["diff"]),
                          f"{_signed(r['diff_mean'])} [{_signed(r['ci95'][0])}, {_signed(r['ci95'][1])}]",
                          _pct(r["detectable"])])
    abl_rows = []
    for name, a in q3["ablation"].items():
        for key, v in a.items():
            if key != "seed":
                abl_rows.append([name, str(a["seed"]), key.replace("_", " "), _pct(v["mAP"]), _pct(v["full"])])
    return {
        "1. Stage II pose transfer on held-out identities (L1 lower, SSIM higher is better)":
            (["predictor", "L1", "SSIM"], gen_rows),
        "1b. What G's image depends on: mean absolute change (in [0, 1]) when one input is swapped for another "
        "pair's, mean over seeds":
            (["generator", "another person's source (identity)", "another target pose", "another noise vector",
              "real targets of the two persons (for scale)"], input_rows),
        "2. Pose invariance: mAP / top-1 (%) on similar- and different-pose matches, mean over seeds":
            (["encoder", "mAP similar", "mAP different", "mAP gap", "top-1 similar", "top-1 different",
              "top-1 gap"], pose_rows),
        f"3. Re-ID, Stage I vs Stage III over seeds {', '.join(map(str, q3['seeds']))} (%, mean ± std)":
            (["protocol", "cascade stage", "metric", "chance", "Stage I", "Stage III", "paired difference per seed",
              "mean difference [95 % CI]", "smallest detectable gain"], reid_rows),
        "3b. Ablation (mAP %, one seed)": (["run", "seed", "protocol, stage", "mAP", "full Stage III mAP"], abl_rows),
    }


def format_tables(results: Dict[str, Any]) -> str:
    """All tables as plain text (what ``scripts/experiment.py`` prints)."""
    out = []
    for title, (head, rows) in tables(results).items():
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        out.append(title)
        for row in [head, *rows]:
            out.append("  " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
        out.append("")
    out.append(verdicts(results))
    return "\n".join(out)


def verdicts(results: Dict[str, Any]) -> str:
    """One line per question: whether its goal was reached, with the deciding numbers."""
    q1, q2, q3 = results["q1_generation"], results["q2_pose_invariance"], results["q3_reid"]
    last = q1["epochs"][-1]
    best = min(b["L1"] for b in q1["baselines"].values())
    main = next(r for r in q3["rows"] if r["protocol"] == "openreid" and r["stage"] == "first_stage"
                and r["metric"] == "mAP")
    yes = {True: "reached", False: "NOT reached"}
    return "\n".join([
        f"Goal 1 (G beats both trivial predictors on L1 and SSIM): {yes[q1['goal_reached']]} "
        f"(last epoch L1 {last['L1']:.4f} vs best trivial {best:.4f}; SSIM {last['SSIM']:.4f})",
        f"Goal 2 (the pose gap's size shrinks from Stage I to Stage III): {yes[q2['goal_reached']]} "
        f"(mAP gap {_signed(q2['mean']['Stage I']['gap']['mAP'])} -> {_signed(q2['mean']['Stage III']['gap']['mAP'])})",
        f"Goal 3 (Stage III improves on Stage I: the 95 % interval of the paired mAP difference excludes 0): "
        f"{yes[q3['goal_reached']]} (open-reid first stage: {_signed(main['diff_mean'])} points, 95 % CI "
        f"[{_signed(main['ci95'][0])}, {_signed(main['ci95'][1])}] over {main['n']} seeds; the smallest gain "
        f"these seeds could detect (80 % power) is {_pct(main['detectable'])} points)",
    ])


def write_outputs(results: Dict[str, Any], out_dir: str) -> str:
    """Write ``results.json`` and ``index.html`` into ``out_dir``; returns the page's path."""
    write_json(results, os.path.join(out_dir, "results.json"))
    cfg = results["config"]
    doc = dominate.document(title="FD-GAN experiment on the synthetic data")
    with doc.head:
        tags.meta(charset="utf-8")
        tags.style("table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}")
    with doc:
        tags.h2("FD-GAN in miniature: three questions on the synthetic data")
        tags.p(f"{cfg['num_ids']} identities, {cfg['num_cams']} cameras, {cfg['height']} x {cfg['width']} images, "
               f"{cfg['arch']} starting from {describe(results.get('backbone'))}; Stage III lr {cfg['stage3_lr']}; seeds {', '.join(map(str, cfg['seeds']))}; "
               f"total {results['total_s']:.0f} s.")
        tags.pre(verdicts(results))
        for title, (head, rows) in tables(results).items():
            tags.h3(title)
            with tags.table():
                tags.tr([tags.th(h) for h in head])
                for row in rows:
                    tags.tr([tags.td(x) for x in row])
        tags.h3("Held-out persons: source, target pose, real target, then G at each Stage II epoch (first seed)")
        tags.img(src=url_for(results["q1_generation"]["grid"]), style="image-rendering:pixelated;height:600px")
        tags.p("Pose split: a true match's pose distance is the mean distance of the keypoints seen in both "
               "images after centring each pose and dividing by its height; matches at or below the median "
               "distance are 'similar pose'. Each part is scored with the other part's matches removed.")
        tags.a("results.json", href="results.json")
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(path, doc.render())
    return path
