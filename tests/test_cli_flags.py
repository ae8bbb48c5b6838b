"""Every command-line flag is defined in one place: the run flags both CLIs share come from one
function (run_options.add_run_flags) and fill the one shared config (RunConfig); each CLI's own flags
fill its own config; no flag string is added twice; the release's flags keep their names and
defaults (the release's baseline.py and options.py)."""
import argparse
import os
import dataclasses
import inspect

import pytest

import baseline
from helpers import REPO_ROOT
import options
import run_options
from fdgan.pipeline import TrainConfig
from reid.pipelines.baseline import BaselineConfig
from reid.pipelines.run import RunConfig

PARSERS = {"baseline.py": baseline.build_parser, "train.py": lambda: options.Options().parser}


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _defining_line(action: argparse.Action) -> tuple[str, int]:
    """Where ``add_argument`` was called for ``action``: (file, line), recorded while building."""
    return action._where  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def built():
    """Both parsers, each action tagged with the source line that added it."""
    real = argparse._ActionsContainer.add_argument

    def tagged(self, *args, **kwargs):
        action = real(self, *args, **kwargs)
        caller = inspect.stack()[1]
        action._where = (caller.filename, caller.lineno)
        return action
    argparse._ActionsContainer.add_argument = tagged
    try:
        return {name: make() for name, make in PARSERS.items()}
    finally:
        argparse._ActionsContainer.add_argument = real


def test_shared_flags_come_from_one_definition_and_fill_run_config(built):
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    by_dest = {name: {a.dest: a for a in _actions(p)} for name, p in built.items()}
    common = set(by_dest["baseline.py"]) & set(by_dest["train.py"])
    assert run_fields <= common
    # The release gives these two flags of the same name different spellings, defaults or meanings.
    assert common - run_fields == {"batch_size", "lr", "eval_step", "arch", "resume"}
    for dest in common - run_fields:
        a, b = by_dest["baseline.py"][dest], by_dest["train.py"][dest]
        assert (a.option_strings, a.default, type(a)) != (b.option_strings, b.default, type(b)), dest
    for dest in run_fields:
        a, b = by_dest["baseline.py"][dest], by_dest["train.py"][dest]
        assert _defining_line(a) == _defining_line(b), dest  # the same add_argument call
        assert _defining_line(a)[0] == inspect.getsourcefile(run_options.add_run_flags)
        assert (a.option_strings, a.default, a.type, a.choices, a.help) == \
            (b.option_strings, b.default, b.type, b.choices, b.help)
        assert a.default == getattr(RunConfig(), dest), dest


def test_no_flag_string_is_added_twice_and_every_dest_is_a_config_field(built):
    lines = set()
    for name, parser in built.items():
        config = BaselineConfig if name == "baseline.py" else TrainConfig
        fields = {f.name for f in dataclasses.fields(config)}
        seen: dict[str, argparse.Action] = {}
        for action in _actions(parser):
            for flag in action.option_strings:
                assert flag not in seen, (name, flag)
                seen[flag] = action
            assert action.dest in fields, (name, action.dest)
            lines.add(_defining_line(action))
        assert set(fields) == {a.dest for a in _actions(parser)}, name  # and every field has its flag
    # Across both CLIs: one source line per flag definition.
    all_actions = [a for p in built.values() for a in _actions(p)]
    per_line: dict[tuple, set] = {}
    for a in all_actions:
        per_line.setdefault(_defining_line(a), set()).add(tuple(a.option_strings))
    assert all(len(v) == 1 for v in per_line.values())
    strings: dict[str, set] = {}
    for a in all_actions:
        for flag in a.option_strings:
            strings.setdefault(flag, set()).add(_defining_line(a))
    # Only the release's flags that differ between its two CLIs are spelled in both files.
    twice = {f for f, v in strings.items() if len(v) > 1}
    assert twice == {"-b", "--batch-size", "--lr", "--eval-step", "--arch", "--resume"}


@pytest.mark.parametrize("name,argv,expected", [
    ("baseline.py", [], dict(dataset="market1501", batch_size=256, workers=4, split=0, height=256, width=128,
                             arch="resnet50", lr=0.01, np_ratio=3, momentum=0.9, weight_decay=5e-4, step_size=40,
                             resume="", evaluate=False, epochs=50, eval_step=20, seed=1,
                             data_dir=os.path.join(REPO_ROOT, "datasets"),
                             logs_dir=os.path.join(REPO_ROOT, "checkpoints"),
                             combine_trainval=False)),
    ("train.py", [], dict(stage=1, dataset="market1501", dataroot="./datasets/", checkpoints="./checkpoints/",
                          name="FD-GAN", arch="resnet50", norm="batch", drop=0.2, connect_layers=0, fuse_mode="cat",
                          pose_feature_size=128, noise_feature_size=256, pose_aug="no", batch_size=16, workers=4,
                          width=128, height=256, niter=50, niter_decay=50, lr=0.001, save_step=5, eval_step=10,
                          display_port=6006, display_id=1, display_winsize=256, display_freq=10,
                          display_single_pane_ncols=0, update_html_freq=100, no_html=False, print_freq=10,
                          lambda_recon=1.0, lambda_veri=1.0, lambda_sp=1.0, smooth_label=False)),
])
def test_release_defaults(name, argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # baseline.py's default folders are beside it, not in the working directory
    if name == "baseline.py":
        cfg = baseline.config_from_args(baseline.build_parser().parse_args(argv))
    else:
        cfg = options.Options().parse(argv)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_shared_flags_reach_both_configs():
    argv = ["--no-pretrained", "--no-progress", "--rerank-topk", "7", "--num-val", "0.5", "--seed", "3",
            "-d", "synthetic", "--amp", "--amp-dtype", "bf16", "--protocol", "both"]
    b = baseline.config_from_args(baseline.build_parser().parse_args(argv))
    t = options.Options().parse(argv)
    for cfg in (b, t):
        assert isinstance(cfg, RunConfig)
        assert (cfg.pretrained, cfg.progress, cfg.rerank_topk, cfg.num_val, cfg.seed, cfg.dataset, cfg.amp,
                cfg.amp_dtype, cfg.protocol) == (False, False, 7, 0.5, 3, "synthetic", True, "bf16", "both")
    with pytest.raises(SystemExit):
        options.Options().parser.parse_args(["--compile-rescoring"])
    with pytest.raises(SystemExit):
        baseline.build_parser().parse_args(["--channels-last"])


def test_the_model_settings_are_one_config_gathered_from_the_flags():
    """train.py's GAN flags reach the model only through TrainConfig.gan (a GANConfig): no flag, the
    release's defaults; each flag moves its own field and no other."""
    from fdgan.model import FDGANModel, GANConfig
    assert options.Options().parse([]).gan == GANConfig()
    gan_fields = {f.name for f in dataclasses.fields(GANConfig)}
    assert gan_fields <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert "batch_size" not in gan_fields and "display_id" not in gan_fields  # run settings stay out
    cfg = options.Options().parse(["--stage", "2", "--arch", "resnet18", "--height", "64", "--width", "32",
                                   "--lambda-sp", "10", "--lambda-veri", "0", "--norm", "instance", "--drop", "0.5",
                                   "--smooth-label", "--netG-pretrain", "g.pth", "--niter-decay", "3", "--lr", "0.02",
                                   "--apply-lr-mult", "--no-pretrained", "-b", "4"])
    assert cfg.gan == GANConfig(stage=2, arch="resnet18", height=64, width=32, lambda_sp=10.0, lambda_veri=0.0,
                                norm="instance", drop=0.5, smooth_label=True, netG_pretrain="g.pth", niter_decay=3,
                                lr=0.02, apply_lr_mult=True, pretrained=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gan.lr = 1.0  # type: ignore[misc]
    small = options.Options().parse(["--no-pretrained", "--arch", "resnet18", "--height", "32", "--width", "32",
                                     "--pose-feature-size", "8", "--noise-feature-size", "8", "--lambda-sp", "4"])
    assert FDGANModel.from_options(small).config == small.gan == GANConfig.from_options(small)
    assert FDGANModel.from_options(small).config.lambda_sp == 4.0


def test_gan_loss_flag_reaches_both_gan_losses():
    from fdgan.model import FDGANModel
    assert options.Options().parse([]).gan_loss == "release"
    cfg = options.Options().parse(["--gan-loss", "logits", "--no-pretrained", "--arch", "resnet18", "--height", "32",
                                   "--width", "32", "--pose-feature-size", "8", "--noise-feature-size", "8"])
    model = FDGANModel.from_options(cfg)
    assert model.criterion_gan_d.mode == model.criterion_gan_g.mode == "logits"
    with pytest.raises(SystemExit):
        options.Options().parser.parse_args(["--gan-loss", "sigmoid"])
