"""HPSv3 worker protocol end to end (tiny random-weight Qwen2-VL in the main environment) and benchmark.py's summary.
The official backend (hpsv3 in .venv-hpsv3) is not run here: installing it pulls a CUDA torch and deepspeed."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.metrics.hpsv3.score import HPSv3Worker, metric_columns, read_prompt, summarize, worker_python


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hpsv3")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_worker_scores_over_the_protocol(images):
    prompts = ["a red car", "two cats on a sofa", "a watercolor painting of a lighthouse at dusk"]
    with HPSv3Worker("tiny", device="cpu", python=sys.executable, batch_size=2) as worker:
        assert worker.info == {"ready": True, "backend": "tiny", "device": "cpu", "dtype": "torch.float32"}
        scores = worker.score(images, prompts)
        assert scores.shape == (3,) and np.isfinite(scores).all() and len(set(scores.round(6))) == 3
        # an image's score does not depend on its batch or position (padding is masked)
        np.testing.assert_allclose(worker.score(images[::-1], prompts[::-1])[::-1], scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(worker.score(images[2:], prompts[2:]), scores[2:], rtol=1e-4, atol=1e-5)
        assert worker.score(images[:1], ["another prompt"])[0] != pytest.approx(scores[0])
        with pytest.raises(HarnessError, match="image file not found: .*missing.png"):
            worker.score([images[0].parent / "missing.png"], ["x"])
        # raw lines: the worker answers each with one JSON line (nothing else reaches stdout) and keeps serving
        for raw, error in [(json.dumps({"images": [str(images[0])], "prompts": ["a", "b"]}), "1 images but 2 prompts"),
                           ("not json", "JSONDecodeError"), (json.dumps({"prompts": []}), "KeyError")]:
            worker.process.stdin.write(raw + "\n")
            worker.process.stdin.flush()
            assert error in worker._receive()["error"]
        arrays = [np.asarray(Image.open(p)) for p in images]
        np.testing.assert_allclose(worker.score_images(arrays, prompts), scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        worker.score(images[:2], ["x"])


def test_official_backend_refuses_the_cpu_unless_forced_and_names_the_make_target():
    with pytest.raises(HarnessError, match="make hpsv3-env"):
        HPSv3Worker("hpsv3", device="cpu", force_cpu=True, python=sys.executable)  # hpsv3 is not installed here
    with pytest.raises(HarnessError, match="needs a GPU"):
        HPSv3Worker("hpsv3", device="cpu", python=sys.executable)


def test_official_worker_checks_its_weights_before_starting(tmp_path, monkeypatch):
    from harness.metrics.hpsv3.score import open_worker

    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *args, **kwargs: None)  # an empty cache
    with pytest.raises(HarnessError, match="harness assets --fetch hpsv3`"):
        open_worker(tmp_path)
    (tmp_path / "hpsv3").mkdir()
    (tmp_path / "hpsv3" / "HPSv3.safetensors").write_bytes(b"")
    with pytest.raises(HarnessError, match="harness assets --fetch qwen2-vl-7b-instruct"):
        open_worker(tmp_path)
    (tmp_path / "Qwen2-VL-7B-Instruct").mkdir()
    (tmp_path / "Qwen2-VL-7B-Instruct" / "config.json").write_text("{}")
    monkeypatch.delenv("HARNESS_HPSV3_PYTHON", raising=False)
    with pytest.raises(HarnessError, match="make hpsv3-env"):  # weights found; the environment is what is missing
        open_worker(tmp_path)


def test_worker_python_is_the_side_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_HPSV3_PYTHON", raising=False)
    with pytest.raises(HarnessError, match="make hpsv3-env"):
        worker_python(tmp_path)
    (tmp_path / ".venv-hpsv3" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-hpsv3" / "bin" / "python").write_text("")
    assert worker_python(tmp_path) == str(tmp_path / ".venv-hpsv3" / "bin" / "python")
    monkeypatch.setenv("HARNESS_HPSV3_PYTHON", "/opt/py")
    assert worker_python(tmp_path) == "/opt/py"


def test_summary_is_benchmark_py_calculate_category_stats(tmp_path):
    stats = summarize({"Animals": [10.0, 8.0], "Food": [5.0], "Plants": []})
    assert stats["Animals"] == {"count": 2, "mean": 9.0, "std": 1.0, "min": 8.0, "max": 10.0}
    assert stats["Plants"] == {"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    # OVERALL: unweighted mean of the non-empty categories' means (7.0, not 23/3), std of those means
    assert stats["OVERALL"] == {"count": 3, "mean": 7.0, "std": 2.0, "min": 5.0, "max": 10.0}
    assert metric_columns(stats) == {"hpsv3": 7.0, "hpsv3_animals": 9.0, "hpsv3_food": 5.0, "hpsv3_plants": 0.0}
    with pytest.raises(HarnessError, match="no scores"):
        summarize({"Food": []})
    (tmp_path / "a.txt").write_text("a cat\nsitting\n")
    assert read_prompt(tmp_path / "a.txt") == "a cat\n\nsitting\n"  # the official reader's quirk, kept


FAKE_HPSV3 = '''
import json, os, torch
from torch import nn
class TinyRewardModel(nn.Module):
    """Qwen2VLRewardModelBT's shape, tiny: a bf16 trunk, then its float32 ranknet head applied as upstream does."""
    def __init__(self, hidden=8):
        super().__init__()
        self.trunk = nn.Linear(hidden, hidden).to(torch.bfloat16)
        self.rm_head = nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16),
                                     nn.ReLU(), nn.Linear(16, 2)).to(torch.float32)
    def forward(self, x):
        hidden_states = self.trunk(x)
        with torch.autocast(device_type="cuda", dtype=torch.float32):  # qwen2vl_trainer.py: a no-op on CPU tensors
            return self.rm_head(hidden_states)
class HPSv3RewardInferencer:
    """Stands in for hpsv3.inference.HPSv3RewardInferencer: records how it is built and called."""
    def __init__(self, config_path=None, checkpoint_path=None, device="cuda", differentiable=False):
        if os.environ.get("FAKE_HPSV3_FAIL"):
            raise OSError("Qwen2-VL config.json: unexpected end of file")
        self.model = TinyRewardModel().eval()
        with open(os.environ["FAKE_HPSV3_LOG"], "a") as log:
            log.write(json.dumps({"config": open(config_path).read() if config_path else None,
                                  "checkpoint": checkpoint_path, "device": device}) + "\\n")
    def reward(self, prompts, image_paths):  # the later upstream order; 1.0.0 had (image_paths, prompts)
        assert all(os.path.isfile(p) for p in image_paths)
        logits = self.model(torch.ones(len(prompts), 8, dtype=torch.bfloat16))  # fails on a bf16 head input
        return torch.tensor([[float(len(p)), float(l)] for p, l in zip(prompts, logits[:, 1])], dtype=torch.bfloat16)
'''


def test_official_backend_path_with_a_stand_in_package(images, tmp_path, monkeypatch):
    """The worker's hpsv3 branch against a stand-in `hpsv3` package: keyword call, mu = column 0, local weights."""
    package = tmp_path / "site" / "hpsv3"
    (package / "config").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_HPSV3)
    (package / "config" / "HPSv3_7B.yaml").write_text('rm_head_type: "ranknet"\nmodel_name_or_path: '
                                                      '"Qwen/Qwen2-VL-7B-Instruct"\nbf16: True\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("FAKE_HPSV3_LOG", str(tmp_path / "log.jsonl"))
    with HPSv3Worker("hpsv3", device="cpu", checkpoint=tmp_path / "HPSv3.safetensors", base=tmp_path / "qwen",
                     force_cpu=True, python=sys.executable) as worker:
        assert worker.info["dtype"] == "torch.bfloat16" and worker.info["device"] == "cpu"
        scores = worker.score(images[:2], ["four", "sixteen letters."])
    assert scores.tolist() == [4.0, 16.0]
    (built,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert built["checkpoint"] == str(tmp_path / "HPSv3.safetensors") and built["device"] == "cpu"
    assert f'model_name_or_path: "{tmp_path / "qwen"}"' in built["config"] and "bf16: True" in built["config"]


# hpsv3's imports that its own requirements bring in (transformers needs huggingface_hub, packaging, requests;
# datasets needs pandas); import name -> distribution for the others.
TRANSITIVE = {"huggingface_hub", "packaging", "requests", "pandas"}
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "torch.utils.tensorboard": "tensorboard"}


def test_hpsv3_env_installs_every_module_the_package_imports():
    import re
    from pathlib import Path

    fixture = json.loads((Path(__file__).parents[1] / "fixtures" / "hpsv3-1.0.0-imports.json").read_text())
    declared = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in fixture["requires_dist"]}
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    line = re.search(r"^HPSV3_PACKAGES \?= (.*)$", makefile, re.MULTILINE)
    assert line and "$(HPSV3_VENV)/bin/pip install $(HPSV3_PACKAGES)" in makefile
    installed = {re.split(r"[<>=!~ ]", p.strip('"'))[0].lower() for p in line.group(1).split()}
    missing = [m for m in fixture["imports"] if m not in TRANSITIVE
               and DISTRIBUTION.get(m, m).lower() not in declared | installed]
    assert missing == [], f"make hpsv3-env installs nothing that provides {missing}"
    assert {"hpsv3", "matplotlib", "tensorboard"} <= installed


def test_worker_start_up_errors_are_relayed(tmp_path, monkeypatch):
    package = tmp_path / "site" / "hpsv3"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_HPSV3)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("FAKE_HPSV3_FAIL", "1")
    with pytest.raises(HarnessError, match="did not start: OSError: Qwen2-VL config.json: unexpected end of file"):
        HPSv3Worker("hpsv3", device="cpu", force_cpu=True, python=sys.executable)


def test_the_gpu_message_names_no_setting_that_does_not_exist():
    with pytest.raises(HarnessError) as err:
        HPSv3Worker("hpsv3", device="cpu", python=sys.executable)
    assert "hpsv3_force_cpu" not in str(err.value) and "needs a GPU" in str(err.value)


def test_evaluate_passes_the_suite_root_to_hpsv3(tmp_path, monkeypatch):
    import types

    from harness import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "evaluate_prompt_run", lambda *args: seen.append(args[-1]))
    monkeypatch.setattr(evaluate, "require_assets", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "load_prompts", lambda *args: None)
    (tmp_path / "runs" / "s" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "r" / "manifest.json").write_text("{}")
    suite = types.SimpleNamespace(name="s", root=tmp_path / "elsewhere", prompts="p.txt", metrics=("hpsv3",),
                                  path=tmp_path / "s.toml")
    run = types.SimpleNamespace(run_id="r", suite="s", metrics=("hpsv3",))
    evaluate.evaluate_runs(suite, [run], tmp_path / "runs", "cpu")
    assert seen and seen[0]["hpsv3"]["root"] == tmp_path / "elsewhere"
