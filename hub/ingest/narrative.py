"""FHIR's rules for a resource's narrative (``Narrative.div``), checked before anything can show it.

A narrative is XHTML that a GP's software may display as it stands, so what could run a script or
break the page is refused at ingest, in every version (txt-1 and txt-2 are the same in STU3, R4 and
R5, http://hl7.org/fhir/R4/narrative.html):

- well-formed XML read by the hub's safe parser (no DTD, no entities): FHIR's XHTML has XML's five
  entities and numeric character references only, so ``&reg;`` is an error (``&#174;`` is not); and
  no CDATA section or processing instruction, which an HTML parser would read otherwise than XML;
- a ``div`` in the XHTML namespace, holding XHTML elements only;
- txt-1: "only the basic html formatting elements and attributes". The lists are those of FHIR's
  reference validator (org.hl7.fhir.validation, XhtmlValidator): no script, style element, form,
  frame, iframe, object, head, body, base or link, and no event attribute (``onclick``...);
- links, images and citations without a script URL (``javascript:``, ``vbscript:``), and ``data:``
  URLs for images only; a style attribute without a script (``expression(``, a script URL);
- txt-2: some non-whitespace text (or an image).

Faults are told in fixed phrases; element names are named only when they are HTML's own.
"""

from __future__ import annotations

import re

from lxml import etree

from hub.ingest.fhir_xml import SAFE_PARSER, XHTML_NS

_XHTML = f"{{{XHTML_NS}}}"
_XML = "{http://www.w3.org/XML/1998/namespace}"

#: txt-1's elements, as FHIR's reference validator lists them.
_ELEMENTS = frozenset(
    {"p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small"}
    | {"big", "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo"}
    | {"kbd", "sub", "sup", "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup"}
    | {"col", "thead", "tr", "tfoot", "tbody", "th", "td", "code", "samp", "img", "map", "area"}
)
#: Attributes any of them may carry, but style (a style may hold a script), as lxml names them.
_ANYWHERE = frozenset(
    {"title", "class", "id", "lang", f"{_XML}lang", f"{_XML}space", "dir", "accesskey", "tabindex"}
    | {"span", "width", "align", "valign", "char", "charoff", "abbr", "axis", "headers", "scope"}
    | {"rowspan", "colspan"}
)
#: ... and those of one element only, as ``element.attribute``.
_ELEMENT_ATTRIBUTES = frozenset(
    {"a.href", "a.name", "a.charset", "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape", "a.coords"}
    | {"img.src", "img.border", "img.alt", "img.longdesc", "img.height", "img.width", "img.usemap"}
    | {"img.ismap", "blockquote.cite", "q.cite", "map.name", "area.shape", "area.coords", "area.href"}
    | {"area.nohref", "area.alt", "table.summary", "table.width", "table.border", "table.frame"}
    | {"table.rules", "table.cellspacing", "table.cellpadding", "pre.space", "td.nowrap"}
)
#: Attributes holding a URL that a browser follows or loads.
_URLS = frozenset(
    {"a.href", "area.href", "img.src", "img.longdesc", "img.usemap", "blockquote.cite", "q.cite"}
)
#: HTML elements a narrative may not hold, named in a detail (any other name could be data).
_HTML_REFUSED = frozenset(
    {"script", "noscript", "style", "link", "meta", "base", "head", "body", "html", "title", "form"}
    | {"input", "button", "select", "option", "textarea", "label", "fieldset", "frame", "frameset"}
    | {"iframe", "object", "embed", "applet", "param", "audio", "video", "source", "canvas", "template"}
    | {"font", "center", "u", "s", "strike", "ins", "del", "section", "article", "nav", "header", "footer"}
)
_SCRIPT_SCHEMES = ("javascript:", "vbscript:")
# Browsers ignore ASCII whitespace and control characters inside a URL's scheme ("java\tscript:").
_IGNORED_IN_URLS = re.compile(r"[\x00-\x20]+")
_XML_WHITESPACE = " \t\r\n"


#: Each element allowed, by lxml's name for it (``{namespace}name``).
_TAGS = {f"{_XHTML}{name}": name for name in _ELEMENTS}


def _element_refused(tag: str) -> str:
    if not tag.startswith(_XHTML):
        return "holds an element outside XHTML"
    name = tag[len(_XHTML) :]
    refused = "holds an element narrative may not use"
    return f"{refused} ({name})" if name in _HTML_REFUSED else refused


def _attribute_problem(element: str, attribute: str, value: str) -> str | None:
    """What is wrong with an attribute that is not allowed on every element, or is a style."""
    if attribute.lower().startswith("on"):
        return "holds an event attribute (no scripts in narrative)"
    combined = f"{element}.{attribute}"
    if attribute != "style" and combined not in _ELEMENT_ATTRIBUTES:
        return "holds an attribute narrative may not use"
    plain = _IGNORED_IN_URLS.sub("", value).lower()
    if combined in _URLS:
        if plain.startswith(_SCRIPT_SCHEMES):
            return "holds a script URL"
        if plain.startswith("data:") and combined != "img.src":
            return "holds a data URL outside an image"
    elif attribute == "style" and ("expression(" in plain or any(s in plain for s in _SCRIPT_SCHEMES)):
        return "holds a style with a script"
    return None


def narrative_problem(div: str) -> str | None:
    """What is wrong with a ``Narrative.div`` (XHTML as text, as JSON carries it), or None."""
    # The text is passed on as sent, and an HTML parser reads a CDATA section or a processing
    # instruction as a comment that ends at the first ">": what XML takes for text would be markup in
    # a GP's browser. Neither has a place in a narrative ("<" stands for nothing else in XML).
    if "<![CDATA[" in div:
        return "holds a CDATA section"
    if "<?" in div:
        return "holds a processing instruction"
    try:
        root = etree.fromstring(div.encode("utf-8"), parser=SAFE_PARSER)
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): no character XML can hold
        return "not well-formed XHTML"
    except etree.XMLSyntaxError as exc:
        if exc.code == etree.ErrorTypes.ERR_UNDECLARED_ENTITY:
            return "uses an entity XHTML does not have (write the character, or a numeric reference)"
        return "not well-formed XHTML"
    if root.getroottree().docinfo.doctype:
        return "must not hold a DOCTYPE"
    if root.tag != f"{_XHTML}div":
        return "must be a div in the XHTML namespace"
    for element in root.iter():  # the parser dropped comments and processing instructions
        name = _TAGS.get(element.tag)
        if name is None:
            return _element_refused(element.tag)
        for attribute, value in element.items():
            problem = None if attribute in _ANYWHERE else _attribute_problem(name, attribute, value)
            if problem is not None:
                return problem
    has_text = any(text.strip(_XML_WHITESPACE) for text in root.itertext())
    if not has_text and root.find(f".//{_XHTML}img") is None:
        return "has no text"
    return None
