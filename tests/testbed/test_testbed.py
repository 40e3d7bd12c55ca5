"""The embedded testbed: data, committed checkpoints, the feature network, the training script, the suite."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from harness.guidance import GuidanceSpec
from harness.models import build_model
from harness.sampling import SamplerSpec, generate
from harness.suite import load_suite
from harness.testbed import compare, data, train
from harness.testbed.features import TestbedExtractor as ShapeNetExtractor, reference_images


def test_data_is_deterministic_varied_and_labelled():
    a, la = data.draw(64, 3)
    b, lb = data.draw(64, 3)
    c, _ = data.draw(64, 4)
    assert a.dtype == np.uint8 and a.shape == (64, 32, 32, 3)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert set(la.tolist()) <= set(range(len(data.CLASSES)))
    same_class = a[la == la[0]]
    assert len({im.tobytes() for im in same_class}) == len(same_class)  # no two images of a class alike
    assert not np.array_equal(reference_images(8), data.draw(8, data.TRAIN_SEED)[0])


def test_committed_feature_network_classifies_held_out_images():
    images, labels = data.draw(400, 31337)
    logits = ShapeNetExtractor().extract([images], 400, 200, progress=False)["logits"]
    assert (logits.argmax(1) == labels).mean() > 0.95


def test_suite_loads_and_guidance_matters_on_the_committed_models():
    suite = load_suite("suites/testbed.toml")
    assert suite.reference == "testbed:10000"
    cfg_run = next(r for r in suite.runs if r.run_id == "cfg-omega3")
    models = {role: build_model(spec) for role, spec in cfg_run.models.items()}
    extractor = ShapeNetExtractor()
    accuracy = {}
    for name, guidance in (("none", GuidanceSpec("none")), ("cfg", cfg_run.guidance)):
        images, labels = generate(models, guidance, SamplerSpec("euler", 12), list(range(96)))
        logits = extractor.extract([images], 96, 96, progress=False)["logits"]
        accuracy[name] = (logits.argmax(1) == labels).mean()
    assert accuracy["cfg"] > accuracy["none"] + 0.05
    assert accuracy["none"] > 0.3  # far above chance (0.1): the committed model learned the classes


@pytest.mark.parametrize("part", ["routing", "masking"])
def test_training_script_writes_loadable_checkpoints_and_a_record(tmp_path, part):
    train.main(["--only", part, "--steps", "32", "--batch", "8", "--pool", "64", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "testbed_record.json").read_text())
    assert record[part]["steps"] == 32 and record[part]["log"][-1]["step"] == 32
    assert np.isfinite(record[part]["log"][-1]["loss"])
    spec = train.model_spec(part)
    spec.checkpoint = str(tmp_path / f"testbed_{part}.safetensors")
    build_model(spec)  # strict load into the suite's architecture
    assert (tmp_path / "testbed_routing_early.safetensors").exists() == (part == "routing")


def test_retrain_comparison_measures_differences_in_seed_spreads(tmp_path, capsys):
    committed = pd.DataFrame({"run": ["unguided-seed0", "unguided-seed1", "unguided-seed2", "cfg"],
                              "gflops": [1.0, 1.0, 1.0, 2.0], "fd_testbed": [10.0, 11.0, 12.0, 5.0]})
    retrained = committed.assign(fd_testbed=[10.5, 11.5, 12.5, 9.0])
    table = compare.compare(committed, retrained).set_index("run")
    assert list(table["metric"].unique()) == ["fd_testbed"]  # cost columns are not compared
    assert table.loc["cfg", "seed_sd"] == pytest.approx(1.0)  # pooled over both tables' seed group
    assert table.loc["cfg", "delta_in_sd"] == pytest.approx(4.0) and not table.loc["cfg", "within_spread"]
    assert table.loc["unguided-seed1", "within_spread"]
    committed.to_csv(tmp_path / "a.csv", index=False)
    retrained.to_csv(tmp_path / "b.csv", index=False)
    assert compare.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    assert "fd_testbed: 3/4 runs within" in capsys.readouterr().out
    assert compare.rank_agreement(compare.compare(committed, retrained)) == pytest.approx(1.0)
    assert compare.rank_agreement(compare.compare(committed, committed.assign(fd_testbed=[3.0, 2.0, 1.0, 4.0]))) \
        == pytest.approx(-1.0)
    assert compare.main([str(tmp_path / "a.csv"), str(tmp_path / "missing.csv")]) == 2


def test_training_is_deterministic_from_its_seed(tmp_path):
    args = ["--only", "routing", "--steps", "8", "--batch", "8", "--pool", "64"]
    for run in ("a", "b"):
        train.main([*args, "--out", str(tmp_path / run)])
    train.main([*args, "--seed", "1", "--out", str(tmp_path / "c")])
    weights = {run: (tmp_path / run / "testbed_routing.safetensors").read_bytes() for run in "abc"}
    assert weights["a"] == weights["b"] and weights["a"] != weights["c"]


@pytest.mark.parametrize("part", ["routing", "masking"])
def test_training_gives_bit_identical_weights_on_1_and_2_threads(tmp_path, part):
    """The README's reproducibility claim: training is deterministic from --seed whatever the thread count."""
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            train.main(["--only", part, "--steps", "3", "--batch", "16", "--pool", "16", "--threads", str(n),
                        "--out", str(tmp_path / f"t{n}")])
    finally:
        torch.set_num_threads(threads)
    one, two = (load_file(tmp_path / f"t{n}" / f"testbed_{part}.safetensors") for n in (1, 2))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one), [k for k in one if not torch.equal(one[k], two[k])][:5]
