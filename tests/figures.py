"""Figures a test reports for the end of the run (load figures, a model test's
totals): printed as a section of the terminal summary, never asserted on."""

from __future__ import annotations

from typing import Any

import pytest


class Section:
    """A terminal-summary section: a title and the lines tests added to it."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section(self.title)
        for line in self.lines:
            terminalreporter.write_line(line)


def report(config: pytest.Config, title: str, line: str) -> None:
    """Adds a line to the section `title`, registered as a plugin on first use."""
    name = f"codeq-figures-{title}"
    section: Section | None = config.pluginmanager.get_plugin(name)
    if section is None:
        section = Section(title)
        config.pluginmanager.register(section, name)
    section.lines.append(line)
