"""`harness search`: an adaptive (successive-halving) search of a suite's grid for the quality-vs-cost front."""

from harness.search.command import add_search_parser, main_search

__all__ = ["add_search_parser", "main_search"]
