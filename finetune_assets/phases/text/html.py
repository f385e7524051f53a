"""HTML to plain text with the standard library's HTMLParser: title, block breaks, no scripts or styles."""

import re
from html.parser import HTMLParser


class _HtmlText(HTMLParser):
    """Collect readable text: headings become underlined reST titles (so the section parsers work on HTML
    too), <pre> keeps its lines, script/style/nav are dropped, and content inside role="main" or <main>
    is kept apart so page chrome (navigation, footers) can be left out when the page marks its content."""

    BLOCK = {"p", "div", "li", "dt", "dd", "tr", "table", "section", "ul", "ol", "dl", "blockquote", "br"}
    VOID = {"br", "img", "meta", "link", "hr", "input", "wbr", "area", "base", "col", "embed", "source"}
    SKIP = {"script", "style", "nav", "noscript", "template", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.body: list[str] = []
        self.main: list[str] = []
        self.main_depth = 0
        self.skip_depth = 0
        self.pre_depth = 0
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.headings: list[tuple[bool, str]] = []  # (inside main content, heading text)
        self.pre: list[str] | None = None
        self.title_parts: list[str] = []
        self.in_title = False

    def _emit(self, text: str) -> None:
        self.body.append(text)
        if self.main_depth:
            self.main.append(text)

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in self.VOID:
            if tag == "br":
                self._emit("\n")
            return
        if self.main_depth:
            self.main_depth += 1
        elif dict(attrs).get("role") == "main" or tag == "main":
            self.main_depth = 1
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
            if self.pre is None:
                self.pre = []
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading, self.heading_level = [], int(tag[1])
        elif tag in self.BLOCK:
            self._emit("\n\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in self.VOID:
            return
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            if not self.pre_depth and self.pre is not None:
                # indented like a reST literal block, so paragraph parsers skip it as code
                block = "".join(self.pre).strip("\n")
                self._emit("\n\n" + "\n".join("    " + line for line in block.split("\n")) + "\n\n")
                self.pre = None
        elif self.heading is not None and re.fullmatch(r"h[1-6]", tag):
            title = " ".join("".join(self.heading).replace("¶", "").split())
            self.heading = None
            if title:
                self.headings.append((bool(self.main_depth), title))
                mark = "=-~^\"'"[min(self.heading_level, 6) - 1]
                self._emit(f"\n\n{title}\n{mark * len(title)}\n\n")
        elif tag in self.BLOCK:
            self._emit("\n\n")
        if self.main_depth:
            self.main_depth -= 1

    def handle_data(self, data):
        if self.in_title:
            self.title_parts.append(data)
        if self.skip_depth:
            return
        if self.heading is not None:
            self.heading.append(data)
        elif self.pre is not None:
            self.pre.append(data)
        else:
            self._emit(re.sub(r"\s+", " ", data.replace("¶", "")))


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, text) of an HTML page: the first heading (else <title>) and the readable text."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    chunks = parser.main if "".join(parser.main).strip() else parser.body
    text = "".join(chunks)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    main_headings = [title for in_main, title in parser.headings if in_main]
    headings = main_headings or [title for _, title in parser.headings]
    title = headings[0] if headings else " ".join("".join(parser.title_parts).split())
    return title or None, text
