"""The debugger panel's source view: the whole file, scrollable, the current line centred.

Cheap for a 5,000-line file because a step sends a few hundred bytes, not the file: the file's
highlighted lines are one HTML widget and its line numbers one RadioButtons widget (a click on a
number is a value the kernel hears: toggle a breakpoint there), both set once per file. What
moves — the current line, the breakpoint marks, where to scroll — is one small ``<style>``
widget of ``nth-child`` rules scoped to this view. Scrolling needs no JavaScript: the rule for
the line to show gives it ``scroll-snap-align: center`` and a short CSS animation makes the
scroll box a mandatory snap container for 0.4 s (a new animation name restarts it), so the
browser centres that line once and the user scrolls freely afterwards (half a box of space
after the last line lets the last lines be centred too).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import ipywidgets as widgets

LINE_PX = 20  # one source line (the gutter's numbers and the code's lines share it: they line up)
SHOWN_LINES = 21  # the scroll box's height in lines
CURRENT_BG = "#fff3b0"
KIND_STYLE = {"plain": "background:#d32f2f", "condition": "background:#ef6c00",
              "log": "background:#1565c0; border-radius:0.2em"}
STYLE = f"""<style>
@keyframes aml-dbg-follow-0 {{from {{scroll-snap-type:y mandatory}} to {{scroll-snap-type:y mandatory}}}}
@keyframes aml-dbg-follow-1 {{from {{scroll-snap-type:y mandatory}} to {{scroll-snap-type:y mandatory}}}}
.aml-dbg .aml-dbg-scroll {{height:{SHOWN_LINES * LINE_PX}px; overflow-y:auto; overflow-x:auto; align-items:flex-start;
  border:1px solid #e0e0e0}}
.aml-dbg .aml-dbg-gutter {{width:auto; flex:0 0 auto; margin:0; padding:0}}
.aml-dbg .aml-dbg-gutter .widget-radio-box {{padding:0; margin:0}}
.aml-dbg .aml-dbg-gutter label {{height:{LINE_PX}px; line-height:{LINE_PX}px; margin:0 4px 0 0; padding:0 4px;
  font-family:monospace; font-size:12px; color:#888; text-align:right; min-width:3.2em; justify-content:flex-end;
  cursor:pointer; border-radius:0.8em; box-sizing:border-box}}
.aml-dbg .aml-dbg-gutter input {{display:none}}
.aml-dbg .aml-dbg-code-block {{flex:1 0 auto; margin:0}}
.aml-dbg .aml-dbg-lines {{font-family:monospace; font-size:13px; padding-bottom:{SHOWN_LINES // 2 * LINE_PX}px}}
.aml-dbg .aml-dbg-lines > div {{height:{LINE_PX}px; line-height:{LINE_PX}px; white-space:pre}}
</style>"""
_serial = itertools.count()


class SourceView(widgets.VBox):
    """One file's lines; ``show`` moves the marks, ``go_to`` scrolls; ``on_toggle(line)`` at a click."""

    def __init__(self, on_toggle: Callable[[int], None]) -> None:
        self.scope = f"aml-dbg-src-{next(_serial)}"
        self.path: str | None = None
        self.line_count = 0
        self.current: int | None = None
        self.kinds: dict[int, str] = {}  # line -> its breakpoint's kind (plain, condition, log)
        self.target: int | None = None  # the line last scrolled to (centred)
        self.follows = 0  # how many times the view scrolled (each restarts the snap animation)
        self._on_toggle = on_toggle
        self._updating = False
        self.gutter = widgets.RadioButtons(options=[], value=None, layout=widgets.Layout(width="auto"))
        self.gutter.add_class("aml-dbg-gutter")
        self.gutter.observe(self._clicked, "value")
        self.code = widgets.HTML()
        self.code.add_class("aml-dbg-code-block")
        self.marks = widgets.HTML()
        self.marks.add_class("aml-dbg-marks")
        self.scroll = widgets.HBox([self.gutter, self.code])
        self.scroll.add_class("aml-dbg-scroll")
        self.scroll.add_class(self.scope)
        super().__init__([self.marks, self.scroll])
        self.add_class("aml-dbg-source-view")

    def load(self, path: str | None, lines: list[str]) -> None:
        """A new file: its lines sent once (nothing else ever resends them)."""
        self.path, self.line_count = path, len(lines)
        self.current, self.target, self.kinds = None, None, {}
        self._updating = True
        try:
            self.gutter.value = None
            self.gutter.options = [(str(n), n) for n in range(1, len(lines) + 1)]
        finally:
            self._updating = False
        self.code.value = "<div class='aml-dbg-lines'>" + "".join(
            f"<div class='aml-dbg-line-{n}'>{markup or ' '}</div>" for n, markup in enumerate(lines, 1)) + "</div>"
        self._draw_marks()

    def show(self, current: int | None, kinds: dict[int, str], follow: bool) -> None:
        """The current line and the breakpoint marks; ``follow``: scroll the current line to the centre."""
        if follow and current is not None:
            self.target, self.follows = current, self.follows + 1
        if (current, kinds) == (self.current, self.kinds) and not follow:
            return
        self.current, self.kinds = current, dict(kinds)
        self._draw_marks()

    def go_to(self, line: int) -> None:
        """Scroll line ``line`` to the centre (clamped to the file)."""
        if self.line_count:
            self.target, self.follows = max(1, min(line, self.line_count)), self.follows + 1
            self._draw_marks()

    def _clicked(self, change: dict) -> None:
        line = change.get("new")
        if self._updating or line is None:
            return
        self._updating = True
        try:
            self.gutter.value = None  # the next click on the same number is a change again
        finally:
            self._updating = False
        self._on_toggle(int(line))

    def _draw_marks(self) -> None:
        scope = f".{self.scope}"
        rules = []
        if self.target is not None:
            rules.append(f"{scope} {{animation:aml-dbg-follow-{self.follows % 2} 0.4s}}")
            rules.append(f"{scope} .aml-dbg-lines > div:nth-child({self.target}) {{scroll-snap-align:center}}")
        if self.current is not None:
            rules.append(f"{scope} .aml-dbg-lines > div:nth-child({self.current}), "
                         f"{scope} .widget-radio-box label:nth-child({self.current}) {{background:{CURRENT_BG}}}")
        for line, kind in sorted(self.kinds.items()):
            rules.append(f"{scope} .widget-radio-box label:nth-child({line}) {{{KIND_STYLE.get(kind, KIND_STYLE['plain'])};"
                         f" color:#fff; font-weight:bold}}")
        self.marks.value = "<style>" + "\n".join(rules) + "</style>"
