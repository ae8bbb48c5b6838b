"""Tests of reid.visualization and scripts/visualize_ranks.py: ranked lists of both cascade stages."""
from __future__ import annotations

import importlib.util
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import List
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.evaluators import extract_features, pairwise_distance, rescore_distances
from reid.models import build_siamese
from reid.models.loading import load_siamese
from reid.pipelines.common import load_dataset
from reid.utils.data.loaders import build_eval_loader, unique_items
from reid.visualization import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    QUERY_COLOUR,
    RankItem,
    RankLayout,
    RankRow,
    draw_ranked_list,
    rank_lists,
    visualize_ranks,
)
from tests.browser import is_blank, screenshot
from tests.conftest import REPO_ROOT

H, W = 64, 32
SCRIPT = os.path.join(REPO_ROOT, "scripts", "visualize_ranks.py")


# --------------------------------------------------------------------------- rank_lists
def test_rank_lists_exclusion_order_and_flags() -> None:
    query = [("q0.jpg", 1, 0), ("q1.jpg", 2, 1)]
    gallery = [("g0.jpg", 1, 0), ("g1.jpg", 1, 1), ("g2.jpg", 2, 0), ("g3.jpg", 3, 1), ("g4.jpg", 2, 1)]
    distmat = np.array([
        [0.1, 0.5, 0.3, 0.2, 0.4],  # g0 is query 0's identity AND camera: left out
        [0.2, 0.2, 0.1, 0.2, 0.0],  # g4 likewise for query 1; g0, g1, g3 tie: gallery order
    ])
    assert rank_lists(distmat, query, gallery, topk=10) == [
        [(3, False), (2, False), (4, False), (1, True)],
        [(2, True), (0, False), (1, False), (3, False)],
    ]
    assert rank_lists(torch.from_numpy(distmat), query, gallery, topk=2) == [
        [(3, False), (2, False)],
        [(2, True), (0, False)],
    ]
    with pytest.raises(ConfigError, match="--topk"):
        rank_lists(distmat, query, gallery, topk=0)
    with pytest.raises(ValueError, match="shape"):
        rank_lists(distmat[:, :4], query, gallery)


# --------------------------------------------------------------------------- drawing
def solid(colour) -> Image.Image:
    return Image.new("RGB", (16, 32), colour)


def test_draw_ranked_list_frames() -> None:
    layout = RankLayout(thumb_height=40, thumb_width=20, border=3)
    grey, blue_grey = (128, 128, 128), (90, 100, 110)
    rows = [
        RankRow("first stage", [RankItem(solid(grey), True, "#1"), RankItem(solid(grey), False, "#2"),
                                RankItem(solid(grey), True, "#3")]),
        RankRow("second stage", [RankItem(solid(grey), False, "#1"), RankItem(solid(grey), True, "#2")]),
    ]
    picture = draw_ranked_list(solid(blue_grey), rows, title="q", layout=layout)
    assert picture.size == layout.canvas_size(2, 3)
    px = picture.load()
    tile_w, tile_h = layout.tile_size
    for r, row in enumerate(rows):
        qx, qy = layout.tile_origin(r, 0)
        assert px[qx + 1, qy + 1] == QUERY_COLOUR
        assert px[qx + layout.border + 5, qy + layout.border + 5] == blue_grey
        for c, item in enumerate(row.items, start=1):
            x, y = layout.tile_origin(r, c)
            colour = MATCH_COLOUR if item.is_match else MISMATCH_COLOUR
            # all four frame sides, and the thumbnail inside
            for fx, fy in ((x, y), (x + tile_w - 1, y + tile_h - 1), (x + tile_w // 2, y + 1),
                           (x + 1, y + tile_h // 2)):
                assert px[fx, fy] == colour, (r, c, fx, fy)
            assert px[x + layout.border, y + layout.border] == grey
            assert px[x + tile_w - 1 - layout.border, y + tile_h - 1 - layout.border] == grey
    # tiles never overlap: rank 1 starts after the query, row 1 after row 0's captions
    assert layout.tile_origin(0, 1)[0] >= layout.tile_origin(0, 0)[0] + tile_w
    captions = layout.caption_lines * layout.line_height
    assert layout.tile_origin(1, 0)[1] >= layout.tile_origin(0, 0)[1] + tile_h + captions


def test_draw_ranked_list_widens_for_long_title() -> None:
    layout = RankLayout(thumb_height=20, thumb_width=10)
    picture = draw_ranked_list(solid((0, 0, 0)), [RankRow("x", [])], title="a long title " * 10, layout=layout)
    assert picture.width > layout.canvas_size(1, 0)[0]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ResNet-18 E in baseline.py's form, in a folder whose name holds markup."""
    torch.manual_seed(0)
    model = build_siamese("resnet18", pretrained=False)
    with torch.no_grad():  # a verification head that is not constant
        model.embed_model.classifier.weight.normal_(0, 0.5)
        model.embed_model.bn.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("ranks_ckpt") / 'run <i>"x"&y'
    folder.mkdir()
    path = folder / "model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


class _Srcs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: List[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src"]


@pytest.mark.slow
def test_visualize_ranks_end_to_end(tmp_path: Path, checkpoint: Path, synthetic_root: str) -> None:
    data_dir = os.path.dirname(synthetic_root)
    out = tmp_path / "ranks"
    topk, rerank_topk = 5, 8
    result = visualize_ranks(checkpoint, "synthetic", data_dir, out, num_queries=3, seed=1, topk=topk,
                             rerank_topk=rerank_topk, height=H, width=W, batch_size=32)
    assert len(result["images"]) == 3 and all(os.path.isfile(p) for p in result["images"])
    assert len({p for p in result["images"]}) == 3

    page = Path(result["page"])
    parser = _Srcs()
    text = page.read_text(encoding="utf-8")
    parser.feed(text)
    srcs = [unquote(s) for s in parser.srcs]
    assert len(srcs) == 3 and all((page.parent / s).is_file() for s in srcs)
    assert '<i>"x"' not in text and "&lt;i&gt;" in text  # the checkpoint's folder name is escaped

    ranks = json.loads(Path(result["ranks"]).read_text())
    ds = load_dataset("synthetic", data_dir)
    layout = RankLayout()
    for q, picture_path in zip(ranks["queries"], result["images"]):
        qpid, qcam = q["query"]["pid"], q["query"]["cam"]
        assert q["query"]["fname"] in {f for f, _, _ in ds.query}
        with Image.open(picture_path) as im:
            px = im.convert("RGB").load()
        for row, stage in enumerate(("first_stage", "second_stage")):
            listed = q[stage]
            assert len(listed) == topk
            assert [e["rank"] for e in listed] == list(range(1, topk + 1))
            dists = [e["distance"] for e in listed]
            assert dists == sorted(dists)
            for e in listed:
                assert not (e["pid"] == qpid and e["cam"] == qcam)
                assert e["match"] == (e["pid"] == qpid)
                x, y = layout.tile_origin(row, e["rank"])
                assert px[x + 1, y + 1] == (MATCH_COLOUR if e["match"] else MISMATCH_COLOUR)
        assert all(0.0 <= e["distance"] <= 1.0 for e in q["second_stage"])  # P(different) scores

    # The rankings are those of the whole evaluation, restricted to the chosen queries.
    model = load_siamese(checkpoint)
    loader = build_eval_loader(unique_items(ds.query, ds.gallery), ds.images_dir, H, W, 32, 0)
    feats = extract_features(model.base_model, loader, progress=False)
    qf = torch.stack([feats[f] for f, _, _ in ds.query])
    gf = torch.stack([feats[f] for f, _, _ in ds.gallery])
    d1 = pairwise_distance(qf, gf)
    d2 = rescore_distances(d1, qf, gf, model.embed_model, topk=rerank_topk)
    index = {f: i for i, (f, _, _) in enumerate(ds.query)}
    for q in ranks["queries"]:
        i = index[q["query"]["fname"]]
        for stage, dist in (("first_stage", d1), ("second_stage", d2)):
            expected = rank_lists(dist[i:i + 1], [ds.query[i]], ds.gallery, topk)[0]
            assert [e["fname"] for e in q[stage]] == [ds.gallery[g][0] for g, _ in expected]
    assert any(q["first_stage"] != q["second_stage"] for q in ranks["queries"])

    # Same seed, same queries; chosen queries by name.
    again = visualize_ranks(checkpoint, "synthetic", data_dir, tmp_path / "again", num_queries=3, seed=1,
                            topk=topk, rerank_topk=rerank_topk, height=H, width=W)
    assert again["queries"] == result["queries"]
    named = visualize_ranks(checkpoint, "synthetic", data_dir, tmp_path / "named",
                            queries=[ds.query[4][0]], topk=topk, height=H, width=W)
    assert named["queries"] == [ds.query[4]] and len(named["images"]) == 1

    # The page renders: a non-blank screenshot with red (and usually green) frames visible.
    shot = screenshot(page, tmp_path / "shot.png", width=1000, height=900)
    assert not is_blank(shot)
    arr = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    reddish = (arr[..., 0] > 180) & (arr[..., 1] < 50) & (arr[..., 2] < 50)
    assert reddish.sum() > 50


def test_bad_input(tmp_path: Path, checkpoint: Path, synthetic_root: str) -> None:
    data_dir = os.path.dirname(synthetic_root)
    with pytest.raises(DatasetError, match="--queries nope.jpg"):
        visualize_ranks(checkpoint, "synthetic", data_dir, tmp_path, queries=["nope.jpg"], height=H, width=W)
    with pytest.raises(ConfigError, match="--num-queries"):
        visualize_ranks(checkpoint, "synthetic", data_dir, tmp_path, num_queries=0, height=H, width=W)
    backbone_only = tmp_path / "backbone.pth"
    model = build_siamese("resnet18", pretrained=False)
    torch.save({f"module.{k}": v for k, v in model.base_model.state_dict().items()}, backbone_only)
    with pytest.raises(CheckpointError, match="verification head"):
        load_siamese(backbone_only)


def test_cli(tmp_path: Path, checkpoint: Path, synthetic_root: str, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("visualize_ranks_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data_dir = os.path.dirname(synthetic_root)
    out = tmp_path / "cli"
    argv = ["--checkpoint", str(checkpoint), "-d", "synthetic", "--data-dir", data_dir, "--num-queries", "2",
            "--topk", "4", "--height", str(H), "--width", str(W), "-j", "0", "--device", "cpu",
            "--protocol", "official", "--output", str(out)]
    assert module.main(argv) == 0
    assert len(list((out / "images").glob("query_*.png"))) == 2 and (out / "index.html").is_file()
    assert json.loads((out / "ranks.json").read_text())["protocol"] == "official"
    assert module.main(argv + ["--checkpoint", str(tmp_path / "none.pth")]) == 2  # the last one counts
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "none.pth" in err
