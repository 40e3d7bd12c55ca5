"""The report stage: results table, bootstrap intervals, Pareto fronts, paper tables and report.md."""

from harness.report.baselines import baseline_points, load_baseline_table, normalise_paper_map
from harness.report.command import add_report_parser, main_report
from harness.report.page import write_report
from harness.report.paper_tables import write_paper_tables
from harness.report.pareto import pareto_front, plot_pareto
from harness.report.results import collect_results, load_results, metric_higher_is_better
from harness.report.uncertainty import compare_rows, tied_with_best

__all__ = [
    "add_report_parser", "baseline_points", "collect_results", "compare_rows",
    "load_baseline_table", "load_results", "main_report", "metric_higher_is_better", "normalise_paper_map",
    "pareto_front", "plot_pareto", "tied_with_best", "write_paper_tables", "write_report",
]
