"""Numbers reported by papers (baselines/*.csv) and the suite's mapping of runs to those rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.report.formatting import column_direction
from harness.report.results import config_value

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"
META_COLUMNS = ["id", "kind", "source_paper", "source_table", "setting", "notes"]
# Paper order first; any other CSV in baselines/ follows alphabetically.
TABLE_ORDER = ["sg_table1", "sg_table2", "sg_table3", "sg_table4", "sg_table5", "sg_tableA1", "sg_tableA2", "peers"]
TABLE_TITLES = {
    "sg_table1": "SG paper, Table 1: CFG vs SG for masking and routing (SiT-XL/2, 160 epochs)",
    "sg_table2": "SG paper, Table 2: guidance methods on SiT-XL/2 + routing (400 epochs)",
    "sg_table3": "SG paper, Table 3: ImageNet 256 comparison with published models",
    "sg_table4": "SG paper, Table 4: HPSv3 leaderboard with TR-DiT-2.5B",
    "sg_table5": "SG paper, Table 5: GenEval with TR-DiT-2.5B",
    "sg_tableA1": "SG paper, Table A1: TR-DiT-2.5B hyperparameters",
    "sg_tableA2": "SG paper, Table A2: SiT-XL/2 hyperparameters",
    "peers": "Peer results cited for comparison (ImageNet, FID-50k unless stated)",
}
# A suite maps a run id to one "<table>:<row id>" reference or a list of them, e.g. "sg_table2:SG_FLOPS".
PaperMap = Mapping[str, str | Sequence[str]]


def list_baseline_tables(baselines_dir: str | Path = BASELINES_DIR) -> list[str]:
    """Names (file stems) of the baseline tables, in paper order."""
    stems = {p.stem for p in Path(baselines_dir).glob("*.csv")}
    return [t for t in TABLE_ORDER if t in stems] + sorted(stems - set(TABLE_ORDER))


def load_baseline_table(name: str, baselines_dir: str | Path = BASELINES_DIR) -> pd.DataFrame:
    """One baselines/<name>.csv, checked: source columns present, every row labelled reported, unique ids."""
    path = Path(baselines_dir) / f"{name}.csv"
    if not path.is_file():
        raise HarnessError(f"{path}: no such baseline table (have: {', '.join(list_baseline_tables(baselines_dir))})")
    table = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in META_COLUMNS if c not in table.columns]
    if missing:
        raise HarnessError(f"{path}: missing column(s) {', '.join(missing)}")
    if not (table["kind"] == "reported").all():
        raise HarnessError(f"{path}: field 'kind' must be 'reported' on every row")
    if table["id"].duplicated().any() or table["id"].str.contains(":").any():
        raise HarnessError(f"{path}: field 'id' must be unique and free of ':'")
    if table[["source_paper", "source_table", "setting"]].isna().any().any():
        raise HarnessError(f"{path}: every row needs source_paper, source_table and setting")
    return table


def comparable_columns(table: pd.DataFrame) -> list[str]:
    """Reported columns that a run can measure (metrics and costs); the rest is context."""
    return [c for c in table.columns if c not in META_COLUMNS and pd.api.types.is_numeric_dtype(table[c])
            and column_direction(c) is not None]


def context_columns(table: pd.DataFrame) -> list[str]:
    """Columns that describe a row (method, epochs, rank, hyperparameters) rather than measure it."""
    comparable = set(comparable_columns(table))
    return [c for c in table.columns if c not in META_COLUMNS and c not in comparable]


def parse_ref(ref: str, run: str) -> tuple[str, str]:
    """Split "<table>:<row id>" into its parts, naming the run on error."""
    table, sep, row = str(ref).partition(":")
    if not sep or not table or not row:
        raise HarnessError(f"run {run!r}: field 'paper' = {ref!r} must look like 'sg_table2:SG_FLOPS'")
    return table, row


def normalise_paper_map(paper_map: PaperMap | None,
                        baselines_dir: str | Path = BASELINES_DIR) -> dict[str, list[tuple[str, str]]]:
    """Run id -> [(table, row id)], each reference checked against baselines/."""
    out: dict[str, list[tuple[str, str]]] = {}
    tables: dict[str, pd.DataFrame] = {}
    for run, refs in (paper_map or {}).items():
        for ref in [refs] if isinstance(refs, str) else list(refs):
            table, row = parse_ref(ref, run)
            if table not in tables:
                tables[table] = load_baseline_table(table, baselines_dir)
            if row not in set(tables[table]["id"]):
                raise HarnessError(f"run {run!r}: field 'paper' = {ref!r}: no row {row!r} in {table}.csv")
            out.setdefault(str(run), []).append((table, row))
    return out


def paper_map_from_manifests(manifests: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """The `paper` field of each run's resolved config (runs without one are left out)."""
    refs = {run: config_value(m.get("config", {}), "paper") for run, (_, m) in manifests.items()}
    return {run: ref for run, ref in refs.items() if ref}


def baseline_points(results_df: pd.DataFrame, paper_map: PaperMap | None,
                    baselines_dir: str | Path = BASELINES_DIR) -> pd.DataFrame:
    """Reported values of the rows that the suite maps its runs to, one row per (run, reference)."""
    methods = dict(zip(results_df["run"], results_df["method"]))
    rows = []
    for run, refs in normalise_paper_map(paper_map, baselines_dir).items():
        if run not in methods:
            continue
        for table_name, row_id in refs:
            table = load_baseline_table(table_name, baselines_dir)
            reported = table.loc[table["id"] == row_id].iloc[0]
            rows.append({"run": run, "method": methods[run], "baseline": f"{table_name}:{row_id}",
                         **{c: reported[c] for c in comparable_columns(table)}})
    return pd.DataFrame(rows, columns=None if rows else ["run", "method", "baseline"])
