"""The model-family contract (harness.models.family): one entry makes a new family usable end to end, and a suite's
[models.x] table takes exactly its family's config fields, checked by name and type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.cli import main as cli
from harness.errors import HarnessError
from harness.models import ARCHS, FAMILIES, ModelSpec, build_model, register_family
from harness.models.family import ConfigError, Family, FamilyConfig
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify
from harness.suite import load_suite


@dataclass(frozen=True)
class ToyConfig(FamilyConfig):
    """A routed toy network: patch tokens through `depth` attention blocks, class and time added to every token."""

    NAME, SPARSITIES = "Toy", ("none", "routing")

    input_size: int = 8
    patch_size: int = 2
    in_channels: int = 3
    hidden_size: int = 16
    depth: int = 3
    num_classes: int = 4
    sparsity: str = "none"
    route: tuple[int, int] | None = None

    @property
    def out_channels(self) -> int:
        return self.in_channels


class Toy(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.in_channels * c.patch_size**2, c.hidden_size)
        self.labels = nn.Embedding(c.num_classes + 1, c.hidden_size)
        self.qkv = nn.ModuleList([nn.Linear(c.hidden_size, 3 * c.hidden_size) for _ in range(c.depth)])
        self.out = nn.Linear(c.hidden_size, c.in_channels * c.patch_size**2)

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        return torch.empty(batch, c.in_channels, c.input_size, c.input_size), torch.empty(batch), \
            torch.zeros(batch, dtype=torch.long)

    def forward(self, x, t, y, gamma=0.0, generators=None, ids=None):
        c = self.config
        p = c.patch_size
        tokens = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, C p p)
        h = self.embed(tokens) + self.labels(y)[:, None] + t[:, None, None]
        B, N, _ = h.shape
        first, last = c.route or (-1, -1)
        if num_sparse(N, gamma) and ids is None:
            ids = select_tokens(B, N, gamma, generators, h.device)
        for i, qkv in enumerate(self.qkv):
            if gamma and i == first:
                saved, h = h, gather_tokens(h, ids)
            q, k, v = qkv(h).chunk(3, dim=-1)
            h = h + F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
            if gamma and i == last:
                h = saved.scatter(1, ids.unsqueeze(-1).expand(-1, -1, h.shape[-1]), h)
        out = self.out(h)  # (B, N, p p C) in unfold's (C, p, p) order
        out = out.view(B, N, c.in_channels, p, p).permute(0, 1, 3, 4, 2).reshape(B, N, -1)
        return unpatchify(out, c.in_channels, p)


TOY = Family(ToyConfig, Toy, {"Toy-1": dict(convention="sit")})

TOY_MAIN = {"arch": "Toy-1", "route": [1, 1]}  # over the conftest suite: routing, one SG run


@pytest.fixture
def toy_family():
    """The toy family registered for one test, and taken out of FAMILIES and ARCHS after it."""
    yield register_family("toy", TOY)
    FAMILIES.pop("toy")
    ARCHS.pop("Toy-1")


def test_a_family_registered_by_one_entry_plans_and_generates(toy_family, tmp_path, write_suite, capsys):
    write_suite("s.toml", suite={"name": "toy", "samples": 4, "batch_size": 3, "metrics": []},
                main={**TOY_MAIN, "depth": 4})
    suite = load_suite(tmp_path / "s.toml")
    config, convention = suite.runs[0].models["main"].config()
    assert isinstance(config, ToyConfig) and config.depth == 4 and convention == "sit"
    assert cli(["plan", str(tmp_path / "s.toml")]) == 0
    plan = capsys.readouterr().out
    assert "Toy-1" in plan and "sg" in plan
    assert cli(["generate", str(tmp_path / "s.toml"), "--out", str(tmp_path / "runs")]) == 0
    from harness.rundir import read_samples

    images = read_samples(tmp_path / "runs" / "toy" / suite.runs[0].run_id)[0]
    assert images.shape == (4, 8, 8, 3) and images.std() > 0


@pytest.mark.parametrize("table, message", [
    ({"dept": 4}, r"\[models.main\]: field 'dept': unknown model option 'dept' for ToyConfig; did you mean 'depth'"),
    ({"depth": 0}, r"\[models.main\]: field 'depth': depth must be >= 1, got 0"),
    ({"depth": "4"}, r"\[models.main\]: field 'depth': depth = '4': input should be a valid integer"),
    ({"route": [2, 5]}, r"\[models.main\]: field 'route': route \[2, 5\] lies outside blocks 0..2 \(depth 3\)"),
    ({"input_size": 9}, r"\[models.main\]: field 'input_size': input_size 9 is not a multiple of patch_size 2"),
    ({"options": {"depth": 4}, "depth": 5}, r"\[models.main\]: field 'depth': set both in the table and in its options"),
])
def test_a_table_takes_exactly_its_family_fields(toy_family, write_suite, table, message):
    with pytest.raises(HarnessError, match=r"s.toml: " + message):
        load_suite(write_suite("s.toml", main={**TOY_MAIN, **table}))


def test_fields_of_one_family_are_refused_for_another(write_suite):
    """MDT's decode_layer is no DiT field, whether written in the table or under options."""
    for table in ({"decode_layer": 2}, {"options": {"decode_layer": 2}}):
        with pytest.raises(HarnessError, match=r"unknown model option 'decode_layer' for DiTConfig"):
            load_suite(write_suite(main=table))
    mdt = write_suite(main={"arch": "MDTv2-S/2", "sparsity": "masking", "route": None, "decode_layer": 2})
    assert load_suite(mdt).models["main"].config()[0].decode_layer == 2


def test_every_family_shares_the_base_checks():
    """One config base: each registered family refuses a sparsity it lacks and a patch grid that does not fit."""
    for name, family in FAMILIES.items():
        arch = next(iter(family.presets))
        for missing in [s for s in ("routing", "masking") if s not in family.config.SPARSITIES] + ["dropout"]:
            with pytest.raises(ConfigError, match=f"supports sparsity .* got '{missing}'"):
                ModelSpec(arch, sparsity=missing, route=(0, 0) if missing == "routing" else None).config()
        side = family.config.SIDE
        with pytest.raises(ConfigError, match=f"{side} .* is not a multiple of patch_size"):
            ModelSpec(arch, overrides={side: family.presets[arch][side] + 1}).config()


def test_a_second_registration_is_refused(toy_family):
    with pytest.raises(ValueError, match="registered already"):
        register_family("toy", TOY)
    assert build_model(ModelSpec("Toy-1")).net.config == ToyConfig()
