"""Training-code save formats load unchanged; bad files get one clear sentence.

Each file is built the way its codebase's own save call builds it (see harness/models/ckpt_files.py for where):
CompVis/tread train.py, REPA train.py, sail-sg/MDT TrainLoop.save, Lightning's Trainer.save_checkpoint (with an
EMA module and with the WeightAveraging callback), DDP / torch.compile prefixes, safetensors, a diffusers folder.
"""

from __future__ import annotations

import argparse
import copy
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.helpers import suite_text
from harness.errors import HarnessError
from harness.models import ModelSpec, build_model, randomize_weights
from harness.models.ckpt_files import read_checkpoint

ARCH = "Testbed-XS/4"


def _net(seed: int) -> nn.Module:
    return randomize_weights(build_model(ModelSpec(ARCH)).net, seed=seed)


class Precond(nn.Module):
    """A preconditioning wrapper holding the network as `self.model` (TREAD's EDMPrecond, MaskDiT's EDMPrecond)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.model = net


def _adamw_state(module: nn.Module) -> dict:
    """A real optimizer state dict after one step (exp_avg tensors and all), of a copy of `module`."""
    module = copy.deepcopy(module)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    sum(p.sum() for p in module.parameters() if p.requires_grad).backward()
    opt.step()
    return opt.state_dict()


def _loaded(path, weights=None) -> nn.Module:
    return build_model(ModelSpec(ARCH, str(path), weights=weights)).net


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    """(trained, ema): two different weight sets of the same network."""
    return _net(1), _net(2)


def test_tread_train_py_loads_ema_by_default_and_model_on_request(nets, tmp_path):
    trained, ema = nets
    model = Precond(copy.deepcopy(trained))  # train.py: model = diffuser.wrap_model_with_precond(model)
    path = tmp_path / "step_400000.pt"
    torch.save({"model_state_dict": model.state_dict(), "ema_state_dict": Precond(ema).state_dict(),
                "optimizer_state_dict": _adamw_state(model), "step": 400000}, path)
    assert _same(_loaded(path), ema)
    assert _same(_loaded(path, "model"), trained)
    info = read_checkpoint(path)
    assert (info.format, info.wrapper, info.weights, info.step, info.others) == (
        "pytorch", "ema_state_dict", "ema", 400000, ("model",))
    assert "optimizer_state_dict" in info.ignored
    flow = build_model(ModelSpec(ARCH, str(path), weights="model"))
    assert flow.checkpoint == {"format": "pytorch", "wrapper": "model_state_dict", "weights": "model",
                               "step": 400000}


def test_repa_train_py_ignores_the_projector_head_and_names_it(nets, tmp_path, capsys):
    trained, ema = nets
    head = {"projectors.0.0.weight": torch.ones(8, 96), "projectors.0.0.bias": torch.ones(8)}  # build_mlp's first
    path = tmp_path / "0400000.pt"
    torch.save({"model": {**trained.state_dict(), **head}, "ema": {**ema.state_dict(), **head},
                "opt": _adamw_state(trained), "args": argparse.Namespace(model="SiT-XL/2", enc_type="dinov2-vit-b"),
                "steps": 400000}, path)
    assert _same(_loaded(path), ema)
    assert "not used: args, opt, steps, REPA projector head (2 tensors)" in capsys.readouterr().err
    assert read_checkpoint(path).step == 400000


def test_mdt_trainloop_raw_state_dicts_and_wrapper_prefixes_load(nets, tmp_path):
    _, ema = nets
    state = ema.state_dict()
    files = {"ema_0.9999_400000.pt": state,  # MDT TrainLoop.save: th.save(state_dict) of the EMA params
             "ddp.pt": {f"module.{k}": v for k, v in state.items()},
             "compiled.pt": {f"_orig_mod.{k}": v for k, v in state.items()},
             "ddp_compiled.pt": {"ema": {f"module._orig_mod.{k}": v for k, v in state.items()}},
             "nested.pt": {"ema": {"state_dict": state}}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        assert _same(_loaded(tmp_path / name), ema), name
    info = read_checkpoint(tmp_path / "ema_0.9999_400000.pt")
    assert (info.wrapper, info.weights, info.step) == ("the file is the state dict", "unlabelled", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert _same(_loaded(tmp_path / "w.safetensors"), ema) and read_checkpoint(tmp_path / "w.safetensors").format \
        == "safetensors"


def _lightning(state_dict: dict, **extra) -> dict:
    """What Lightning's `_CheckpointConnector.dump_checkpoint` writes (src/lightning/pytorch/trainer/connectors/
    checkpoint_connector.py at 0301490): epoch, global_step, version, state_dict, loops; unless weights_only, the
    callbacks' states (ModelCheckpoint.state_dict's keys), optimizer and scheduler states and the precision plugin's
    (a GradScaler's under "MixedPrecision"); the hyper-parameters as a dict."""
    loop = {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 1200}}
    checkpoint = {"monitor": None, "best_model_score": None, "best_model_path": "/ckpt/epoch=3-step=1200.ckpt",
                  "current_score": None, "dirpath": "/ckpt", "best_k_models": {}, "kth_best_model_path": "",
                  "kth_value": torch.tensor(float("inf")), "last_model_path": ""}
    return {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.5.0", "state_dict": state_dict,
            "loops": {name: loop for name in ("fit_loop", "validate_loop", "test_loop", "predict_loop")},
            "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
                          "'every_n_epochs': 1, 'train_time_interval': None}": checkpoint},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(1200.0)}}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": [], "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                    "growth_interval": 2000, "_growth_tracker": 17},
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-4, "arch": "SiT-XL/2"}, **extra}


class DictConfig(dict):
    """Stands in for omegaconf's DictConfig: a class Lightning pickles when the hyper-parameters are OmegaConf."""


def test_lightning_with_omegaconf_hyperparameters_is_refused_by_name(nets, tmp_path):
    """dump_checkpoint stores OmegaConf hyper-parameters as the object and its type: a class the weights-only reader
    must not unpickle. The refusal names it and says how to get a loadable file."""
    path = tmp_path / "last.ckpt"
    torch.save(_lightning(nets[1].state_dict(), hyper_parameters=DictConfig(lr=1e-4),
                          hyper_parameters_type=DictConfig), path)
    with pytest.raises(HarnessError, match=r"last.ckpt: needs pickled code \(.*DictConfig.*\).*save the weights alone"):
        read_checkpoint(path)


def test_lightning_module_with_an_ema_copy_loads_the_ema(nets, tmp_path):
    trained, ema = nets

    class Module(nn.Module):  # a LightningModule holding the network, its EMA copy and a frozen VAE stand-in
        def __init__(self):
            super().__init__()
            self.model, self.ema, self.vae = copy.deepcopy(trained), copy.deepcopy(ema), nn.Linear(2, 2)

    path = tmp_path / "epoch=3-step=1200.ckpt"
    torch.save(_lightning(Module().state_dict()), path)
    assert _same(_loaded(path), ema) and _same(_loaded(path, "model"), trained)
    info = read_checkpoint(path)
    assert info.wrapper == "state_dict: ema.*" and info.step == 1200 and "vae.* (2 tensors)" in info.ignored


def test_lightning_weight_averaging_callback(nets, tmp_path):
    trained, ema = nets
    wrap = Precond  # a LightningModule with the network as `self.model`
    # WeightAveraging.on_save_checkpoint: state_dict <- the average, current_model_state <- the live weights
    path = tmp_path / "last.ckpt"
    torch.save(_lightning(wrap(ema).state_dict(), current_model_state=wrap(trained).state_dict(),
                          averaging_state={"n_averaged": torch.tensor(1200)}), path)
    assert _same(_loaded(path), ema) and _same(_loaded(path, "model"), trained)
    assert read_checkpoint(path, "model").wrapper == "current_model_state"


def test_diffusers_folder_loads_pixart(tmp_path):
    pytest.importorskip("diffusers")
    net = randomize_weights(build_model(ModelSpec("PixArt-Test")).net, seed=3)
    net.weights_module.save_pretrained(tmp_path / "transformer")  # config.json + diffusion_pytorch_model.safetensors
    loaded = build_model(ModelSpec("PixArt-Test", str(tmp_path / "transformer"))).net
    assert _same(loaded, net)
    info = read_checkpoint(tmp_path / "transformer")
    assert info.format == "diffusers folder" and info.config["_class_name"] == "PixArtTransformer2DModel"


def test_asking_for_weights_the_file_lacks_is_an_error(nets, tmp_path):
    torch.save({"model": nets[0].state_dict(), "opt": {}}, tmp_path / "noema.pt")
    with pytest.raises(HarnessError, match=r"noema.pt: has no ema weights \(it holds model\)"):
        _loaded(tmp_path / "noema.pt", "ema")
    assert _same(_loaded(tmp_path / "noema.pt"), nets[0])


def test_an_unknown_extra_tensor_is_an_error_naming_it(nets, tmp_path):
    torch.save({"ema": {**nets[1].state_dict(), "disc.head.weight": torch.ones(2)}}, tmp_path / "x.pt")
    with pytest.raises(HarnessError, match=r"x.pt: does not fit Testbed-XS/4: same blocks(.|\n)*unexpected keys: disc.head.weight"):
        _loaded(tmp_path / "x.pt")


def test_wrong_architecture_is_said_in_a_line(tmp_path):
    torch.save(_net(0).state_dict(), tmp_path / "xs.pt")
    with pytest.raises(HarnessError) as info:
        build_model(ModelSpec("Testbed-S/4", str(tmp_path / "xs.pt")))
    msg = str(info.value)
    assert "\n" not in msg and "missing keys" not in msg
    assert "4 blocks in the file, Testbed-S/4 has 6" in msg and "width 96 in the file, 128 in Testbed-S/4" in msg
    assert msg.endswith("Testbed-XS/4 matches")


class Payload:  # any class outside the allow-list must not be unpickled
    def __reduce__(self):
        return (print, ("ran code",))


@pytest.mark.parametrize("case, expected", [
    ("text", r"text.pt: is not a PyTorch or safetensors file \(it is text, starting 'model: SiT-X'\)"),
    ("empty", r"empty.pt: is empty \(0 bytes\)"),
    ("truncated_pt", r"truncated_pt.pt: is a truncated or damaged PyTorch file .*zip index is missing"),
    ("truncated_st", r"truncated_st.pt: is a truncated safetensors file"),
    ("class", r"class.pt: needs pickled code \(builtins.print\) to load, which the harness refuses"),
    ("pickle", r"pickle.pt: is a plain Python pickle"),
    ("npz", r"npz.pt: is a zip archive but not a PyTorch file"),
    ("no_tensors", r"no_tensors.pt: holds no state dict of tensors under any known key .*args \(Namespace\)"),
])
def test_bad_files_get_one_sentence(case, expected, tmp_path, capsys):
    import numpy as np

    path = tmp_path / f"{case}.pt"
    state = {k: v.contiguous() for k, v in _net(0).state_dict().items()}
    if case == "text":
        path.write_text("model: SiT-XL/2\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_pt":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "truncated_st":
        save_file(state, str(path))
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "class":
        torch.save({"ema": state, "obj": Payload()}, path)
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"ema": {}}))
    elif case == "npz":
        with path.open("wb") as f:
            np.savez(f, arr_0=np.zeros(3))
    elif case == "no_tensors":
        torch.save({"args": argparse.Namespace(lr=1e-4), "step": 3}, path)
    with pytest.raises(HarnessError, match=expected) as info:
        _loaded(path)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert "ran code" not in capsys.readouterr().out


@pytest.mark.parametrize("weights", [None, "model"])
def test_weights_choice_and_step_reach_the_config_and_manifest(weights, nets, tmp_path, write_suite):
    import json

    from harness.cli import main
    from harness.suite import load_suite

    trained, ema = nets
    torch.save({"model_state_dict": trained.state_dict(), "ema_state_dict": ema.state_dict(), "step": 1200},
               tmp_path / "step_1200.pt")
    suite_file = write_suite("ckpt.toml", suite={"name": "ckpt", "samples": 2, "batch_size": 2}, sampler={"steps": 1},
                             main={"checkpoint": "step_1200.pt", "weights": weights, "sparsity": None, "route": None},
                             runs=[{"name": "plain", "method": "none"}])
    run = load_suite(suite_file, root=tmp_path).runs[0]
    assert run.models["main"].weights == weights
    assert run.config["models"]["main"].get("weights") == weights  # absent by default: earlier hashes unchanged
    assert main(["generate", str(suite_file), "--root", str(tmp_path), "--out", str(tmp_path / "runs")]) == 0
    manifest = json.loads((tmp_path / "runs" / "ckpt" / "plain" / "manifest.json").read_text())
    assert manifest["checkpoints"]["main"] == {"format": "pytorch", "wrapper": f"{weights or 'ema'}_state_dict",
                                               "weights": weights or "ema", "step": 1200}


def test_inspect_reports_the_file_and_a_table_that_loads(nets, tmp_path, capsys):
    from harness.cli import main
    from harness.suite import load_suite

    trained, ema = nets
    path = tmp_path / "step_400000.pt"
    torch.save({"model_state_dict": Precond(trained).state_dict(), "ema_state_dict": Precond(ema).state_dict(),
                "optimizer_state_dict": _adamw_state(trained), "step": 400000}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format       pytorch" in out and "EMA          yes; the file also has: model" in out
    assert "step         400000" in out and "optimizer_state_dict" in out
    assert f"{sum(v.numel() for v in ema.state_dict().values()):,} numbers" in out
    assert "architecture  Testbed-XS/4: family dit, patch 4, depth 4 blocks, width 96" in out
    table = out[out.index("[models.main]"):]
    assert 'weights = "ema"' in table
    suite = tmp_path / "s.toml"
    suite.write_text(suite_text(models={}, runs=[{"name": "plain", "method": "none"}]) + table)  # the table as printed
    spec = load_suite(suite, root=tmp_path).runs[0].models["main"]
    assert _same(build_model(spec).net, ema)


def test_inspect_of_an_unknown_layout_and_of_a_bad_file(tmp_path, capsys):
    from harness.cli import main

    torch.save({"encoder": {"layers.0.w": torch.zeros(3, 4)}, "epoch": 2}, tmp_path / "odd.pt")
    assert main(["inspect", str(tmp_path / "odd.pt")]) == 0
    out = capsys.readouterr().out
    assert "unknown layout" in out and "top-level    encoder, epoch" in out and "layers.0.w: (3, 4)" in out
    (tmp_path / "notes.pt").write_text("hello")
    assert main(["inspect", str(tmp_path / "notes.pt")]) == 2
    assert "notes.pt: is not a PyTorch or safetensors file" in capsys.readouterr().err


def test_weights_without_a_checkpoint_is_a_suite_error(tmp_path, write_suite):
    from harness.suite import load_suite

    suite_file = write_suite("s.toml", main={"weights": "ema"})
    with pytest.raises(HarnessError, match=r"s.toml: \[models.main\]: field 'weights': chooses among a checkpoint"):
        load_suite(suite_file, root=tmp_path)
