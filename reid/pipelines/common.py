"""Pieces shared by the Stage I and Stage II/III runs: model building, data and evaluation."""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional

import torch
from torch import nn

from reid import datasets
from reid.errors import ConfigError, DatasetError
from reid.evaluation_metrics import evaluate_rank, format_results
from reid.evaluation_metrics.chance import chance_levels
from reid.evaluators import CascadeEvaluator, ids_and_cams, extract_features, pairwise_distance
from reid.models.multi_branch import SiameseNet
from reid.utils.data.dataset import Dataset
from reid.utils.data.loaders import build_eval_loader, unique_items
from reid.utils.osutils import write_json
from reid.reranking import rerank_distmat

logger = logging.getLogger(__name__)

PROTOCOLS = ("openreid", "official")


def load_dataset(
    name: str, data_dir: str, split_id: int = 0, num_val: Optional[float] = None, protocol: str = "openreid",
    require_poses: bool = False,
) -> Dataset:
    """Load ``<data_dir>/<name>`` (the folder name must equal the dataset name, as the release)."""
    kwargs = dict(split_id=split_id, protocol=protocol, require_poses=require_poses)
    if num_val is not None:
        kwargs["num_val"] = int(num_val) if float(num_val).is_integer() and num_val >= 1 else float(num_val)
    return datasets.create(name, os.path.join(data_dir, name), **kwargs)


def check_test_images(name: str, data_dir: str, split_id: int, protocols: Iterable[str],
                      num_val: Optional[float] = None) -> None:
    """Check that every query and gallery image of each protocol's test exists, so that a missing
    one stops a run before training rather than at its final test.

    Raises:
        DatasetError: naming the first missing image and how many are missing.
    """
    for protocol in protocols:
        dataset = load_dataset(name, data_dir, split_id, num_val, protocol=protocol)
        files = sorted({f for f, _, _ in dataset.query + dataset.gallery})
        missing = [f for f in files if not os.path.isfile(os.path.join(dataset.images_dir, f))]
        if missing:
            more = f" ({len(missing)} of the {len(files)} listed are missing)" if len(missing) > 1 else ""
            raise DatasetError(f"{os.path.join(dataset.images_dir, missing[0])}: image file not found; it is in "
                               f"the {protocol} query/gallery of split {split_id}{more}")


def expand_protocols(protocol: str) -> list[str]:
    """``openreid`` / ``official`` / ``both`` -> the list of protocols to report."""
    if protocol == "both":
        return list(PROTOCOLS)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol}: expected one of openreid, official, both")
    return [protocol]


def evaluate_on_test(
    model: SiameseNet,
    dataset_name: str,
    data_dir: str,
    split_id: int,
    protocols: Iterable[str],
    height: int,
    width: int,
    batch_size: int,
    workers: int,
    rerank_topk: int,
    device: torch.device,
    num_val: Optional[float] = None,
    title: str = "",
    progress: bool = True,
    k_reciprocal: bool = False,
) -> dict:
    """Both cascade stages on query/gallery under each protocol; features are extracted once.

    With ``k_reciprocal`` the first-stage distances are also re-ranked with k-reciprocal
    encoding (Zhong et al. 2017; k1=20, k2=6, lambda=0.3) and reported as ``'k_reciprocal'``.

    Returns ``{protocol: {'first_stage': metrics, 'second_stage': metrics[, 'k_reciprocal': metrics]}}``.
    """
    loaded = {p: load_dataset(dataset_name, data_dir, split_id, num_val, protocol=p) for p in protocols}
    first = next(iter(loaded.values()))
    items = unique_items(*[d.query for d in loaded.values()], *[d.gallery for d in loaded.values()])
    loader = build_eval_loader(items, first.images_dir, height, width, batch_size, workers)
    base, embed = _unwrap(model).base_model, _unwrap(model).embed_model
    features = extract_features(base, loader, device, desc="Extract test features", progress=progress)
    evaluator = CascadeEvaluator(base, embed, device=device, progress=progress)
    results = {}
    for protocol, ds in loaded.items():
        qf = torch.stack([features[f] for f, _, _ in ds.query])
        gf = torch.stack([features[f] for f, _, _ in ds.gallery])
        logger.info("%s protocol: %d query and %d gallery images", protocol, len(ds.query), len(ds.gallery))
        results[protocol] = evaluator.evaluate_features(
            qf, gf, pairwise_distance(qf, gf), ds.query, ds.gallery, rerank_topk=rerank_topk,
            dataset=dataset_name, title=f"{title}[{protocol}] ", overwrite_distmat=True,
        )
        if k_reciprocal:
            config = "cuhk03" if dataset_name == "cuhk03" else "market1501"
            reranked = rerank_distmat(qf, gf, k1=20, k2=6, lambda_value=0.3)
            results[protocol]["k_reciprocal"] = evaluate_rank(reranked, *ids_and_cams(ds.query, ds.gallery),
                                                              cmc_config=config)
            logger.info(format_results(results[protocol]["k_reciprocal"],
                                       f"{title}[{protocol}] k-reciprocal re-ranking of the first stage"))
    return results


def chance_on_test(dataset_name: str, data_dir: str, split_id: int, protocols: Iterable[str],
                   num_val: Optional[float] = None) -> dict:
    """``{protocol: {'mAP', 'top1'}}``: what a random ranking scores on each protocol's query and
    gallery (:func:`reid.evaluation_metrics.chance.chance_levels`), the scale every result stands on."""
    out = {}
    for p in protocols:
        ds = load_dataset(dataset_name, data_dir, split_id, num_val, protocol=p)
        out[p] = chance_levels(*ids_and_cams(ds.query, ds.gallery))
    return out


def evaluate_on_val(
    model: SiameseNet, dataset: Dataset, height: int, width: int, batch_size: int, workers: int,
    rerank_topk: int, device: torch.device, dataset_name: Optional[str] = None, progress: bool = True,
) -> dict:
    """Both cascade stages with the validation identities as query and gallery."""
    loader = build_eval_loader(dataset.val, dataset.images_dir, height, width, batch_size, workers)
    net = _unwrap(model)
    evaluator = CascadeEvaluator(net.base_model, net.embed_model, device=device, progress=progress)
    return evaluator.evaluate(loader, dataset.val, dataset.val, rerank_topk=rerank_topk,
                              dataset=dataset_name, title="[validation] ")


def write_results(path: str, results: dict, **context) -> None:
    """Write metrics and the settings that produced them as JSON (atomically)."""
    write_json({**context, "results": results}, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
