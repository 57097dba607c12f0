"""What compression did, made visible: charts, merge maps and the HTML report (`tokcomp report`)."""

from tokcomp.visual.merge_map import MergeMap, render, trace_merge_maps
from tokcomp.visual.page import PAGE_NAME, ReportPage, build_page, write_report

__all__ = ["PAGE_NAME", "MergeMap", "ReportPage", "build_page", "render", "trace_merge_maps", "write_report"]
