"""The experiment grid's norm axis: CNN norm swaps as runs, and existing grids left exactly as they were."""

import dataclasses

from keras_vitbn.experiments.config import ExperimentConfig, RunSpec
from keras_vitbn.experiments.runner import RunRecord, config_hash, plan


def test_a_grid_without_norms_keeps_its_runs_slugs_and_train_dicts():
    cfg = ExperimentConfig(name="old", models=("vit", "vit_bnffn"), depths=(1, 2), learning_rates=(0.003,), seeds=(0,))
    specs = cfg.runs()
    assert specs == [RunSpec(m, d, 0.003, 0) for d in (1, 2) for m in ("vit", "vit_bnffn")]
    assert specs[0].slug() == "vit-d1-lr0.003-s0" and specs[0].label() == "vit depth=1 lr=0.003 seed=0"
    d = cfg.train_dict(specs[0])
    assert d["model_overrides"] == {} and "norm" not in d
    record = RunRecord(specs[0], "dir", "h", "completed", [])
    assert "norm" not in record.to_dict()


def test_a_norm_grid_gives_one_run_per_norm_with_its_own_slug_and_hash(tmp_path):
    cfg = ExperimentConfig(
        name="resnet norms",
        models=("resnet18", "resnet34"),
        depths=(None,),
        learning_rates=(1e-4,),
        seeds=(0,),
        norms=("batchnorm", "layernorm"),
        dataset="imagenette",
        optimizer="adamw",
    )
    specs = cfg.runs()
    assert [(s.model, s.norm) for s in specs] == [
        ("resnet18", "batchnorm"),
        ("resnet18", "layernorm"),
        ("resnet34", "batchnorm"),
        ("resnet34", "layernorm"),
    ]
    assert specs[1].slug() == "resnet18-dx-layernorm-lr0.0001-s0" and "norm=layernorm" in specs[1].label()
    assert cfg.train_dict(specs[1])["model_overrides"] == {"norm": "layernorm"}
    planned = plan(cfg, str(tmp_path), "jax")
    hashes = {h for _, _, h, _ in planned}
    assert len(hashes) == 4 and all(c.model_overrides["norm"] == s.norm for s, c, _, _ in planned)
    assert config_hash(cfg.train_dict(specs[0]), "jax") != config_hash(cfg.train_dict(specs[1]), "jax")
    record = RunRecord(specs[1], "dir", "h", "completed", []).to_dict()
    assert record["norm"] == "layernorm"


def test_norms_and_depths_together_on_the_resnet_family():
    cfg = ExperimentConfig(
        name="depth x norm", models=("resnet", "vit_b16"), depths=(18, 34), norms=("batchnorm", "layernorm")
    )
    cells = {(s.model, s.depth, s.norm) for s in cfg.runs()}
    assert ("resnet", 34, "layernorm") in cells and len(cfg.runs()) == 2 * 2 * 2 * 3
    spec = RunSpec("resnet", 34, 0.003, 0, "layernorm")
    assert dataclasses.replace(spec, norm=None).slug() == "resnet-d34-lr0.003-s0"
