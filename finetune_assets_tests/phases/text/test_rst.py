"""phases.text.rst: inline markup cleanup, sections and prose paragraphs."""

from finetune_assets.phases.text.rst import clean_inline, iter_sections, prose_paragraphs


def test_clean_inline_strips_rest_roles_and_markup():
    text = (
        "See :func:`~os.path.join`, :ref:`magic methods <special-lookup>`, :rfc:`7159`, ``f(*a, **kw)``, "
        "*emphasis*, **strong** and `a link <https://x.org>`_ [#note]_ here::"
    )
    assert clean_inline(text) == (
        "See join, magic methods, RFC 7159, f(*a, **kw), emphasis, strong and a link here:"
    )


def test_sections_and_prose_paragraphs_skip_code_and_directives():
    text = (
        "*****\nTitle\n*****\n\nIntro paragraph.\n\nFirst Part\n----------\n\n"
        "Prose that introduces code::\n\n"
        "    x = 1\n\n.. note::\n\n   A note body.\n\n>>> 1 + 1\n2\n\nClosing :class:`int` text.\n"
    )
    sections = iter_sections(text)
    assert [s.title for s in sections] == ["Title", "First Part"]
    assert prose_paragraphs(sections[1].lines, drop_intros=False) == [
        "Prose that introduces code:",
        "Closing int text.",
    ]
    assert prose_paragraphs(sections[1].lines) == ["Closing int text."]  # the bare intro says nothing
