import io

from rich.console import Console
from rich.table import Table

from patchsight.demo import live_display


def test_the_live_table_ends_its_line_when_the_output_is_a_log_file():
    out = io.StringIO()
    console = Console(file=out, width=60)  # a file: not a terminal
    table = Table(title="progress", show_header=False)
    table.add_row("frames", "3 / 3")
    with live_display(table, console) as live:
        live.update(table)
    console.print("summary")

    lines = out.getvalue().splitlines()
    assert lines[-1] == "summary"
    assert any("3 / 3" in line for line in lines[:-1])
