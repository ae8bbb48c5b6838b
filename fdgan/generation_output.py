"""The files of a pose-transfer run: the generated images, one grid, an HTML page and a manifest.

``images/`` holds one PNG per (source, pose, noise), the resized sources, the pose maps and
``grid.png`` (:func:`make_grid`); ``index.html`` shows them (:class:`reid.utils.html.HTML`,
names escaped); ``manifest.json`` maps every file to its source, pose and noise index.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from fdgan.loading import GeneratorConfig
from reid.utils.data.images import save_image
from reid.utils.html import HTML
from reid.utils.osutils import PathLike, write_json

__all__ = ["make_grid", "write_outputs"]

# Grey value of the empty top-left tile of the grid.
_CORNER_GREY = 255


def make_grid(generated: np.ndarray, source_tiles: Sequence[np.ndarray],
              pose_tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tile sources, pose maps and generated images into one image, without gaps.

    Layout: ``(S + 1)`` rows x ``(P * N + 1)`` columns of H x W tiles. Row 0 holds a white
    corner tile, then the map of pose ``p`` in columns ``1 + p * N .. (p + 1) * N`` (repeated
    for each noise); column 0 holds source ``s`` in row ``1 + s``; tile (1 + s, 1 + p * N + n)
    is ``generated[s, p, n]``.

    Args:
        generated: uint8 ``(S, P, N, H, W, 3)``.
        source_tiles: S uint8 H x W x 3 source images (already resized to H x W).
        pose_tiles: P uint8 H x W x 3 pose-map images.

    Returns:
        uint8 ``((S + 1) * H, (P * N + 1) * W, 3)``.
    """
    gen = np.asarray(generated)
    if gen.ndim != 6 or gen.shape[-1] != 3:
        raise ValueError(f"generated must have shape (S, P, N, H, W, 3), got {gen.shape}")
    s_count, p_count, n_count, h, w, _ = gen.shape
    if len(source_tiles) != s_count or len(pose_tiles) != p_count:
        raise ValueError(
            f"{len(source_tiles)} source and {len(pose_tiles)} pose tiles for {s_count} x {p_count} images")
    grid = np.empty(((s_count + 1) * h, (p_count * n_count + 1) * w, 3), dtype=np.uint8)
    grid[:h, :w] = _CORNER_GREY
    for p, tile in enumerate(pose_tiles):
        for n in range(n_count):
            col = 1 + p * n_count + n
            grid[:h, col * w:(col + 1) * w] = tile
    for s, tile in enumerate(source_tiles):
        grid[(s + 1) * h:(s + 2) * h, :w] = tile
        for p in range(p_count):
            for n in range(n_count):
                col = 1 + p * n_count + n
                grid[(s + 1) * h:(s + 2) * h, col * w:(col + 1) * w] = gen[s, p, n]
    return grid


def write_outputs(
    output_dir: PathLike,
    generated: np.ndarray,
    source_tiles: Sequence[np.ndarray],
    pose_tiles: Sequence[np.ndarray],
    config: GeneratorConfig,
    source_names: Optional[Sequence[str]] = None,
    pose_names: Optional[Sequence[str]] = None,
    title: str = "FD-GAN pose transfer",
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Write the generated images, the grid, an HTML page and a manifest.

    Files (every one written atomically): ``images/gen_sXX_pYY_zZZ.png`` per (source, pose,
    noise); ``images/source_XX.png`` (resized sources); ``images/pose_YY.png`` (pose maps,
    :func:`fdgan.utils.util.posemap2im`); ``images/grid.png`` (:func:`make_grid`);
    ``index.html``; ``manifest.json``.

    Args:
        output_dir: the folder to write into (created).
        generated: uint8 ``(S, P, N, H, W, 3)``, what
            :meth:`fdgan.generation.PoseTransfer.generate` returned.
        source_tiles: the S sources as G saw them
            (:meth:`fdgan.generation.PoseTransfer.source_tiles`).
        pose_tiles: the P pose maps as images (:meth:`fdgan.generation.PoseTransfer.pose_tiles`).
        config: the generator's configuration (shown on the page, recorded in the manifest).
        source_names: captions of the sources (default ``source <s>``); escaped in the page.
        pose_names: captions of the poses (default ``pose <p>``); escaped in the page.
        title: the page title (escaped).
        settings: extra facts recorded in the manifest and shown on the page (e.g. file
            names, seed).

    Returns:
        ``{'page': index.html path, 'grid': grid path, 'manifest': manifest path,
        'images': [paths of the generated PNGs in (s, p, n) order]}``.
    """
    gen = np.asarray(generated)
    s_count, p_count, n_count = gen.shape[:3]
    if len(source_tiles) != s_count or len(pose_tiles) != p_count:
        raise ValueError(f"generated has shape {gen.shape} but {len(source_tiles)} sources and "
                         f"{len(pose_tiles)} poses were given")
    source_names = list(source_names) if source_names is not None else [f"source {s}" for s in range(s_count)]
    pose_names = list(pose_names) if pose_names is not None else [f"pose {p}" for p in range(p_count)]
    out_dir = os.fspath(output_dir)
    page = HTML(out_dir, title)
    page.get_image_dir()
    source_tiles, pose_tiles = list(source_tiles), list(pose_tiles)
    source_files = [f"images/source_{s:02d}.png" for s in range(s_count)]
    pose_files = [f"images/pose_{p:02d}.png" for p in range(p_count)]
    for rel, tile in zip(source_files + pose_files, source_tiles + pose_tiles):
        save_image(tile, os.path.join(out_dir, rel))

    entries = []
    generated_files = []
    for s in range(s_count):
        for p in range(p_count):
            for n in range(n_count):
                rel = f"images/gen_s{s:02d}_p{p:02d}_z{n:02d}.png"
                save_image(gen[s, p, n], os.path.join(out_dir, rel))
                generated_files.append(os.path.join(out_dir, rel))
                entries.append({"file": rel, "source": s, "pose": p, "noise": n})
    grid_rel = "images/grid.png"
    save_image(make_grid(gen, source_tiles, pose_tiles), os.path.join(out_dir, grid_rel))

    shown = 128  # display width of one tile in CSS pixels
    page.add_header(title)
    page.add_header(
        f"{s_count} source(s) x {p_count} pose(s) x {n_count} noise vector(s); generator "
        f"{config.height}x{config.width}, fusion {config.fuse_mode}, norm {config.norm}"
    )
    for key, value in (settings or {}).items():
        page.add_header(f"{key}: {value}")
    page.add_header("grid: sources down the first column, target pose maps along the first row")
    page.add_images([grid_rel], ["grid"], [grid_rel], width=min(1600, shown * (p_count * n_count + 1)))
    page.add_header("target poses")
    page.add_images(pose_files, pose_names, pose_files, width=shown)
    for s in range(s_count):
        page.add_header(f"source: {source_names[s]}")
        ims = [source_files[s]]
        txts = [f"source: {source_names[s]}"]
        for p in range(p_count):
            for n in range(n_count):
                ims.append(f"images/gen_s{s:02d}_p{p:02d}_z{n:02d}.png")
                txts.append(f"{pose_names[p]}, noise {n}")
        page.add_images(ims, txts, ims, width=shown)
    page_path = page.save()

    manifest_path = os.path.join(out_dir, "manifest.json")
    write_json({
        "generator": asdict(config),
        "settings": dict(settings or {}),
        "sources": [{"name": n, "file": f} for n, f in zip(source_names, source_files)],
        "poses": [{"name": n, "file": f} for n, f in zip(pose_names, pose_files)],
        "num_noise": n_count,
        "grid": grid_rel,
        "images": entries,
    }, manifest_path)
    return {"page": page_path, "grid": os.path.join(out_dir, grid_rel), "manifest": manifest_path,
            "images": generated_files}
