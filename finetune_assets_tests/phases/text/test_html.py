"""phases.text.html: HTML to text, main content first, headings kept."""

from finetune_assets.phases.text.html import html_to_text


def test_html_to_text_prefers_main_content_and_underlines_headings():
    html = (
        "<html><body><div class='sidebar'><h3>Navigation</h3></div><div role='main'><h1>Real ¶</h1>"
        "<p>Body <b>text</b>.</p><pre>code\n  indented</pre></div></body></html>"
    )
    title, text = html_to_text(html)
    assert title == "Real"
    assert "Navigation" not in text
    assert text.startswith("Real\n====\n\nBody text.")
    assert "    code\n      indented" in text
