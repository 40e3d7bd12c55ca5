"""Assets: the manifest, the resumable downloader against a loopback HTTP server with Range support, and the check
that stops a suite whose assets are missing before it writes anything."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import assets, preflight
from harness.models import vae as vae_module
from harness.cli import main
from harness.errors import HarnessError
from harness.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file with Range support; cut_after > 0 drops the connection after that many bytes."""

    cut_after = 0
    ranges: list[str | None] = []
    ignore_range = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = 0
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Silence the request log."""


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    """A loopback-only HTTP server on a free port; yields its handler class (settings and the Range log)."""
    handler = type("Handler", (_Handler,), {"ranges": [], "cut_after": 0, "ignore_range": False})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}/file"
    try:
        yield handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_interrupted_download_resumes_with_range_and_verifies(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    server.cut_after = 300_000
    with pytest.raises(HarnessError, match="interrupted"):
        assets.download(server.url, dest, SHA)
    part = dest.with_name("file.bin.part")
    assert not dest.exists() and part.stat().st_size == 300_000
    server.cut_after = 0
    assets.download(server.url, dest, SHA)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges == [None, "bytes=300000-"]


def test_checksum_mismatch_is_rejected_and_nothing_kept(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(HarnessError, match="sha256 mismatch"):
        assets.download(server.url, dest, "0" * 64)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()


def test_complete_part_and_server_ignoring_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)  # complete .part: the server answers 416
    assets.download(server.url, dest, SHA)
    assert dest.read_bytes() == PAYLOAD
    dest.unlink()
    dest.with_name("file.bin.part").write_bytes(PAYLOAD + b"extra")  # longer than the file: never accepted
    with pytest.raises(HarnessError, match="longer than the file"):
        assets.download(server.url, dest)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    server.ignore_range = True  # a server without Range support: the download starts over
    dest.with_name("file.bin.part").write_bytes(b"garbage")
    assets.download(server.url, dest, SHA)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_cli_lists_and_downloads_a_manifest_asset(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f'[assets.toy]\nkind = "checkpoint"\ndescription = "a toy"\npath = "toy.pt"\n'
                        f'url = "{server.url}"\nsha256 = "{SHA}"\n\n'
                        f'[assets.secret]\nkind = "checkpoint"\ndescription = "unreleased"\npath = "s.pt"\n'
                        f'note = "not public"\n')
    argv = ["assets", "--root", str(tmp_path), "--manifest", str(manifest)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "missing" in out and "not public" in out and str(tmp_path / "assets" / "toy.pt") in out
    assert main([*argv, "--fetch"]) == 0
    assert (tmp_path / "assets" / "toy.pt").read_bytes() == PAYLOAD
    assert "present" in capsys.readouterr().out
    assert main([*argv, "--fetch", "secret"]) == 2
    assert "not public" in capsys.readouterr().err


def test_listing_and_fetch_flag_unverified_entries(server, tmp_path, capsys, monkeypatch):
    """An entry to fetch without `verified` is UNVERIFIED in the table and in a line below it, and --fetch warns."""
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f'[assets.confirmed]\nkind = "checkpoint"\ndescription = "a"\npath = "a.pt"\nurl = "{server.url}"\n'
                        f'verified = "the publisher\'s download.py"\n\n'
                        f'[assets.guessed]\nkind = "checkpoint"\ndescription = "b"\npath = "b.pt"\nurl = "{server.url}"\n'
                        f'note = "file name follows a pattern"\n\n'
                        f'[assets.secret]\nkind = "checkpoint"\ndescription = "c"\npath = "c.pt"\nnote = "not public"\n')
    argv = ["assets", "--root", str(tmp_path), "--manifest", str(manifest)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines[0].index("verified")  # the aligned table's column
    column = {line.split()[0]: line[at:].split()[0] for line in lines[1:4]}
    assert column == {"confirmed": "yes", "guessed": "UNVERIFIED", "secret": "-"}
    assert lines[-1].startswith("UNVERIFIED: ") and "guessed" in lines[-1] and "confirmed" not in lines[-1]
    assert main([*argv, "confirmed"]) == 0 and "UNVERIFIED" not in capsys.readouterr().out
    assert main([*argv, "--fetch", "guessed"]) == 0
    err = capsys.readouterr().err
    assert "guessed: UNVERIFIED" in err and "file name follows a pattern" in err
    assert (tmp_path / "assets" / "b.pt").read_bytes() == PAYLOAD  # a warning, not a refusal
    assert main([*argv, "--fetch", "confirmed"]) == 0 and "UNVERIFIED" not in capsys.readouterr().err


def test_repository_manifest_says_how_each_entry_was_verified():
    """Every entry to fetch names what confirmed it, or says in its note why its file name is not verified; hub
    file names with spaces are fetched URL-quoted; HPSv3's categories are the benchmark asset's files."""
    from harness.prompts.hpsv3 import CATEGORIES, category_file

    manifest = assets.load_manifest()
    unverified = {n for n, a in manifest.items() if a.verification == "UNVERIFIED"}
    assert all("not verified" in manifest[n].note for n in unverified), unverified
    assert sum(a.verification == "yes" for a in manifest.values()) > 2 * len(unverified)
    benchmark = manifest["hpsv3-benchmark"]
    assert {category_file(c) for c in CATEGORIES} == set(benchmark.files)
    urls = [d.url for d in benchmark.downloads(REPO)]
    assert any(u.endswith("/benchmark/benchmark_Natural%20Scenery.json") for u in urls) and not any(" " in u for u in urls)


def test_repository_manifest_is_valid_and_names_every_real_asset():
    manifest = assets.load_manifest()
    kinds = {a.kind for a in manifest.values()}
    assert {"checkpoint", "vae", "reference", "samples", "inception"} <= kinds
    for name in ("sit-xl2-256", "dit-xl2-256", "sd-vae-ft-ema", "sd-vae-ft-mse", "adm-ref-imagenet256",
                 "adm-samples-imagenet256", "inception"):
        assert manifest[name].fetchable and manifest[name].size, name
        assert all(d.url.startswith("https://") for d in manifest[name].downloads(REPO))
    assert not manifest["sit-xl2-routing"].fetchable and "not public" in manifest["sit-xl2-routing"].note
    from harness.metrics.features import URL_INCEPTION_V3

    assert manifest["inception"].url == URL_INCEPTION_V3


def test_missing_assets_stop_bench_with_one_message_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights there
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setattr(vae_module, "_hub_cached", lambda hub_id: False)  # as if the Hugging Face cache were empty
    root = tmp_path / "repo"
    root.mkdir()
    code = main(["bench", str(REPO / "suites" / "sit_xl2_reference.toml"), "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("harness: error") == 1 and "nothing was run or written" in err
    for fragment in ("SiT-XL-2-256x256.pt", "sd-vae-ft-ema", "VIRTUAL_imagenet256_labeled.npz",
                     "Inception weights", "harness assets --fetch sit-xl2-256 sd-vae-ft-ema adm-ref-imagenet256 "
                                          "inception"):
        assert fragment in err, fragment
    assert list(root.iterdir()) == []
    code = main(["bench", str(REPO / "suites" / "imagenet256.toml"), "--root", str(root)])
    assert code == 2 and "not public" in capsys.readouterr().err and list(root.iterdir()) == []


def test_present_assets_pass_the_check(tmp_path, monkeypatch):
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setattr(vae_module, "_hub_cached", lambda hub_id: False)
    suite = load_suite(REPO / "suites" / "sit_xl2_reference.toml", root=tmp_path)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    (tmp_path / "inception.pth").write_bytes(b"x")
    (tmp_path / "assets").mkdir()
    for name in ("SiT-XL-2-256x256.pt", "VIRTUAL_imagenet256_labeled.npz"):
        (tmp_path / "assets" / name).write_bytes(b"x")
    vae = tmp_path / "assets" / "sd-vae-ft-ema"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    preflight.require_assets(suite.runs, tmp_path)
    (vae / "config.json").unlink()
    needs = preflight.missing_assets(suite.runs, tmp_path)
    assert [n.asset.name for n in needs] == ["sd-vae-ft-ema"]


def test_asset_registry_imports_no_component():
    """Components declare their needs (vae_need, inception_need); the registry depends on none of them."""
    code = ("import sys, harness.assets; "
            "print(sorted(m for m in sys.modules if m.startswith('harness.') and m != 'harness.assets'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "['harness.errors']"
