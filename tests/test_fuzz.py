"""Property tests: any suite file, prompt file or sample batch ends in success or in one HarnessError naming the
file (which the CLI prints with exit status 2), never in another exception (a traceback)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import suite_text, toml_value
from harness.errors import HarnessError

FAST = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])

SUITE = suite_text(suite={"name": "f"})
LINES = SUITE.splitlines()
FIELDS = [i for i, line in enumerate(LINES) if " = " in line]


SCALARS = st.one_of(st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=12),
                    st.sampled_from(["sg", "cfg", "ag+sg", "cosine", "main", "masking", "none", "Testbed-XS/4"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def assert_names(path: Path, call) -> None:
    """call() succeeds or raises a HarnessError whose message names `path`."""
    try:
        call()
    except HarnessError as err:
        assert str(path) in str(err) or path.name in str(err), str(err)


@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), max_size=3),
       extra=st.sampled_from(["", "[extra]\nx = 1\n", "[[runs]]\nname = \"b\"\nmethod = \"cfg\"\nomega = 2\n",
                              "gamma_weak = [0.5, 0.6]\n", "\x00", "[suite]\n"]))
def test_any_suite_file_loads_or_names_itself(edits, extra):
    from harness.suite import load_suite

    lines = list(LINES)
    for index, value in edits:
        lines[index] = f"{lines[index].split(' = ')[0]} = {toml_value(value)}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "suite.toml"
        path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8", errors="surrogatepass")
        assert_names(path, lambda: load_suite(path, root=folder))


@FAST
@given(data=st.one_of(st.binary(max_size=200), st.lists(st.text(max_size=30), max_size=6).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")), st.lists(
    st.one_of(VALUES, st.fixed_dictionaries({"prompt": VALUES})), max_size=4).map(
    lambda items: "\n".join(json.dumps(i) for i in items).encode())), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_any_prompt_file_reads_or_names_itself(data, suffix):
    from harness.prompts import read_prompt_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"prompts{suffix}"
        path.write_bytes(data)
        assert_names(path, lambda: read_prompt_file(path))


ARRAYS = st.builds(lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
                   st.sampled_from(["uint8", "int64", "float32", "float64", "bool", "int8"]),
                   st.lists(st.integers(0, 5), max_size=5).map(tuple), st.integers(-3, 300))


@FAST
@given(arrays=st.dictionaries(st.sampled_from(["arr_0", "labels", "indices", "mu", "sigma", "mu_s", "other"]),
                              ARRAYS, max_size=4), junk=st.one_of(st.none(), st.binary(max_size=64)),
       cut=st.integers(0, 2000))
@example(arrays={"arr_0": np.zeros(0, np.uint8), "mu": np.uint8(0), "sigma": np.uint8(0)}, junk=None, cut=0)
@example(arrays={"arr_0": np.zeros((1, 2, 2, 3), np.uint8), "labels": np.int64(0), "indices": np.int64(0)},
         junk=None, cut=0)  # both found by this test: scalar statistics, scalar indices
def test_any_sample_batch_reads_or_names_itself(arrays, junk, cut):
    from harness.metrics.evaluate import Reference
    from harness.metrics.reference import open_image_source
    from harness.rundir import read_shard

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = junk if junk is not None else buffer.getvalue()[: cut or None]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "samples-000000.npz"
        path.write_bytes(data)
        assert_names(path, lambda: read_shard(path))

        def as_batch():
            Reference.from_npz(path)
            for _ in open_image_source(path)[1]:
                pass

        assert_names(path, as_batch)
