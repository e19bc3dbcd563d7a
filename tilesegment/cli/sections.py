"""``--help`` with the options in named sections (input, model, tiling, ...), with Click's
own formatter: a command lists its sections as ``(title, [parameter names])``; options not
named fall into "Other options"."""

from __future__ import annotations

import click


class SectionedCommand(click.Command):
    """A Click command whose help groups its options under ``sections``."""

    def __init__(self, *args, sections: tuple[tuple[str, tuple[str, ...]], ...] = (),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                records[param.name] = record
        for title, names in self.sections:
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if records:
            with formatter.section("Other options"):
                formatter.write_dl(list(records.values()))
