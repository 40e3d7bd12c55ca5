"""Commands check the paths they were given before asking for any asset."""

from __future__ import annotations

import numpy as np

from harness.cli import main


def test_adm_eval_names_a_mistyped_batch_before_the_missing_inception_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights anywhere
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    code = main(["adm-eval", str(good), str(tmp_path / "typo.npz")])
    err = capsys.readouterr().err
    assert code == 2 and f"SAMPLE_BATCH {tmp_path / 'typo.npz'}: no such file" in err
    assert "good.npz" not in err and "Inception" not in err
    code = main(["adm-eval", str(good), str(good), "--inception-weights", str(tmp_path / "nope.pth")])
    assert code == 2 and "--inception-weights" in capsys.readouterr().err


def test_reference_and_suite_commands_check_their_paths_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    code = main(["reference", str(tmp_path / "no_images"), str(tmp_path / "out" / "ref.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "SOURCE" in err and "no such file or folder" in err and "the folder of OUT" in err
    assert "Inception" not in err
    code = main(["plan", str(tmp_path / "typo.toml")])
    assert code == 2 and "typo.toml: suite file not found" in capsys.readouterr().err
    code = main(["generate", "suites/testbed.toml", "--root", str(tmp_path / "typo_root")])
    assert code == 2 and "--root" in capsys.readouterr().err
