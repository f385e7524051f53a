"""Concise definitions from documented descriptions: rewrite a description so it names its subject first.

The Python docs describe an object in the imperative ("Serialize *obj* to a JSON formatted str.") or as a
noun phrase ("A subclass of ..."); the scorecard asks "what does X mean / what is the X module for" and
compares the answer with a reference definition. ``predicate`` turns the first sentence into what follows
the subject ("serializes obj to a JSON formatted str"), so an answer reads "`json.dumps` serializes ...".
A sentence that cannot be rewritten with confidence ("If *x* is given, ...") gives None and is skipped:
fewer, clean examples teach the answer form better than many awkward ones.

Pure text functions (no corpus parsing): phases.data.instructions calls them from its generators.
"""

import re

from finetune_assets.phases.text.sentences import split_sentences

MAX_DEFINITION_CHARS = 300  # one or two sentences, as the scorecard asks

MIN_FIRST_SENTENCE = 60  # a shorter first sentence ("Return the hash.") gets the next one too

# Imperative openings of the stdlib docs (counted on python3-doc 3.11: "Return" alone starts 1288 of 6037).
VERBS = frozenset(
    """access acquire add append apply assert bind build call cancel change check clean clear close compare
    compile compress compute connect construct convert copy count create decode decompress decrypt define
    delete deserialize detach determine disable display do download dump emit enable encode encrypt ensure
    enter evaluate execute exit export extract fetch find flush force format generate get handle implement
    import initialize insert install invoke iterate join load lock log look make manipulate map mark match
    move notify open pack parse pass perform pop prepare print process provide push put query raise read
    receive register release reload remove rename render replace represent request reset resolve restore
    retrieve return reverse run save schedule search seek select send serialize set show shut simulate skip
    sleep sort specify split start stop store strip submit support suspend switch sync tell terminate test
    trace translate truncate try unlock unpack unregister update validate verify wait walk warn wrap write
    yield transform accept link indicate attempt turn signal take extend leave paint draw output unset use
    duplicate retry report rewind kill wake rotate analyze allow touch normalize override disassemble issue
    control manage describe block contain encapsulate keep hold""".split()
)

# Verbs that open a noun phrase before a preposition: "Support for ...", "Access to ..." (not "Wait for").
NOUN_LIKE = frozenset(
    "support access control use report output process test link signal trace display".split()
)

_PREPOSITIONS = frozenset("for to of with on from".split())

PARTICIPLES = frozenset("called raised used returned issued emitted invoked triggered sent passed".split())

# Noun-phrase openings that read as "X is <article> <phrase>": "Exception raised when ...", "Base class ...".
NOUN_ARTICLES = {
    "exception": "an", "base": "a", "class": "a", "decorator": "a", "subclass": "a", "abstract": "an",
    "concrete": "a", "abc": "an", "constructor": "a", "context": "a", "wrapper": "a", "factory": "a",
    "helper": "a", "shortcut": "a", "convenience": "a", "variant": "a", "synonym": "a", "alias": "an",
}  # fmt: skip

COMPARATIVES = {"similar": "is", "like": "is", "identical": "is", "equivalent": "is", "same": "is the"}

DETERMINERS = frozenset({"a", "an", "the"})

# A module synopsis that is a noun phrase reads "The `x` module provides <phrase>"; these nouns need "an"/"a".
COUNTABLE = {
    "interface": "an", "implementation": "an", "api": "an", "abstraction": "an", "package": "a",
    "debugger": "a", "disassembler": "a", "parser": "a", "framework": "a", "library": "a", "registry": "a",
    "collection": "a", "toolkit": "a", "tool": "a", "mechanism": "a", "container": "a", "dialog": "a",
    "wrapper": "a", "simple": "a", "generic": "a", "portable": "a", "lightweight": "a", "high-level": "a",
    "low-level": "a", "basic": "a", "configurable": "a", "command-line": "a",
}  # fmt: skip

KEEP_CASE = frozenset("Python Tkinter Tk Tcl Unix UNIX Windows Microsoft Mac Linux GNU's Emacs-like".split())

_CLAUSE_VERB = re.compile(r"\b(?:is|are|was|were|can|will|must|should|may|has|have)\b")

_POINTER = re.compile(
    r",?\s+(?:using|according to|as (?:described|shown|listed) (?:in|below)|listed in)\s+"
    r"(?:this|the following|the table below|the list below)\b[^.:]*"
)

_DANGLING = frozenset("and or the a an of to for with in".split())

_CONJ_VERB = re.compile(r"\b(and|or|then)\s+([a-z]+)\b")


def third_person(verb: str) -> str:
    """ "return" -> "returns", "pass" -> "passes", "copy" -> "copies", "do" -> "does"."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 2 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _base_form(word: str) -> str | None:
    """The base verb of a third-person form in VERBS ("returns" -> "return"), else None."""
    for base in (word[:-1], word[:-2], word[:-3] + "y"):
        if word.endswith("s") and base in VERBS and third_person(base) == word:
            return base
    return None


def _lower_first(word: str) -> str:
    return word if word in KEEP_CASE or not word[1:].islower() else word.lower()


def _coordinated(rest: str) -> str:
    """Later verbs joined to the first ("Encode and decode") take the same person: "encodes and decodes"."""
    return _CONJ_VERB.sub(
        lambda m: f"{m.group(1)} {third_person(m.group(2)) if m.group(2) in VERBS else m.group(2)}", rest
    )


def predicate(sentence: str) -> str | None:
    """What follows the subject when ``sentence`` describes it ("Return the hash." -> "returns the hash"),
    without the final period; None when the opening is not one of the known forms."""
    sentence = sentence.strip().rstrip(".")
    words = sentence.split(" ", 1)
    if len(words) < 2 or not words[0][:1].isupper():
        return None
    first, rest = words[0], words[1]
    low = first.lower()
    if low in VERBS and not (low in NOUN_LIKE and rest.split(" ", 1)[0] in _PREPOSITIONS):
        return f"{third_person(low)} {_coordinated(rest)}"
    if _base_form(low):
        return f"{low} {_coordinated(rest)}"
    if low in PARTICIPLES:
        return f"is {low} {rest}"
    if low == "is":
        return f"is {rest}"
    adverb, _, tail = rest.partition(" ")
    if low.endswith("ly") and adverb in VERBS and tail:  # "Recursively delete ..." -> "recursively deletes"
        return f"{low} {third_person(adverb)} {_coordinated(tail)}"
    if low in COMPARATIVES:
        return f"{COMPARATIVES[low]} {low} {rest}"
    if low in NOUN_ARTICLES:
        return f"is {NOUN_ARTICLES[low]} {_lower_first(first)} {rest}"
    if low in DETERMINERS and not _CLAUSE_VERB.search(" ".join(rest.split()[:8])):
        return f"is {low} {rest}"
    this = re.match(
        r"(?:This|These) (?:function|method|class|exception|decorator|attribute|is\b)\s*", sentence
    )
    if this:
        tail = sentence[this.end() :]
        return ("is " + tail) if this.group(0).rstrip().endswith("is") else tail or None
    return None


def module_predicate(synopsis: str) -> str | None:
    """The rest of "The `x` module ..." from a module synopsis; a bare noun phrase ("Support for ...",
    "Interface to ...") becomes "provides [an] ..."."""
    synopsis = synopsis.strip().rstrip(".")
    if not synopsis or not synopsis[0].isalpha() or synopsis.rsplit(" ", 1)[-1].lower() in _DANGLING:
        return None  # (a synopsis cut at its line end in the source)
    found = predicate(synopsis)
    if found:
        return found
    first = synopsis.split(" ", 1)[0]
    if first.endswith("ing") and " " in synopsis:  # "Representing non-ASCII headers"
        return f"is for {synopsis[0].lower()}{synopsis[1:]}"
    article = COUNTABLE.get(first.lower())
    phrase = " ".join([_lower_first(first), *synopsis.split(" ", 1)[1:]])
    return f"provides {article} {phrase}" if article else f"provides {phrase}"


def leading_sentences(description: str) -> str:
    """The first sentence, with the second when the first is short; "" when that exceeds the limit.
    A pointer to text the answer does not carry ("... using this conversion table") is dropped."""
    sentences = split_sentences(_POINTER.sub("", description))
    if not sentences:
        return ""
    text = sentences[0]
    if len(text) < MIN_FIRST_SENTENCE and len(sentences) > 1:
        text = f"{text} {sentences[1]}"
    return text if len(text) <= MAX_DEFINITION_CHARS else ""


def subject_first(subject: str, description: str) -> str | None:
    """ "`subject` <predicate>." plus the second sentence when the first was short; None when the first
    sentence cannot be rewritten or the answer would be too long."""
    text = leading_sentences(description)
    if not text:
        return None
    first, *more = split_sentences(text)
    found = predicate(first)
    if not found or found.endswith(":"):
        return None
    return " ".join([f"{subject} {found}.", *more])
