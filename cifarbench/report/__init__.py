"""Tables, JSON/CSV/Markdown writers and plots for bench results and runs (no printing here)."""

from cifarbench.report.tables import format_table, skipped_lines
from cifarbench.report.writers import flatten_row, load_result, to_csv, to_markdown, write_outputs

__all__ = ["flatten_row", "format_table", "load_result", "skipped_lines", "to_csv", "to_markdown", "write_outputs"]
