"""digest.render.mustache renders exactly what chevron renders, quirks and fallbacks included."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import chevron
import pytest
from chevron.tokenizer import ChevronError, tokenize
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from digest.render.mustache import Template


def compiled(source: str) -> Template:
    """`source` tokenized by chevron and compiled."""
    return Template(tokenize(source))


def chevron_render(source: str, *scopes: Any) -> str:
    """The reference: chevron on the template text, no partials from disk."""
    return str(chevron.render(source, scopes=list(scopes), partials_path=None))


def assert_same(source: str, *scopes: Any) -> str:
    """Both render `source` alike (or raise the same error); the output."""
    try:
        expected = chevron_render(source, *scopes)
    except Exception as exc:  # chevron's own bugs: ours must fail the same way
        with pytest.raises(type(exc)):
            compiled(source).render(*scopes)
        return ""
    assert compiled(source).render(*scopes) == expected
    return expected


# --- quirks, one by one -----------------------------------------------------------------


def test_escapes_ampersand_quotes_and_angle_brackets_but_not_apostrophes() -> None:
    """`{{x}}` escapes & " < > (not '), `{{{x}}}` and `{{& x}}` escape nothing."""
    data = {"x": "<a href=\"x\">Tom & 'Jerry'</a>"}
    out = assert_same("{{x}}|{{{x}}}|{{& x}}", data)
    assert out.startswith("&lt;a href=&quot;x&quot;&gt;Tom &amp; 'Jerry'&lt;/a&gt;|<a")


def test_falsy_values_print_as_chevron_prints_them() -> None:
    """0, 0.0 and False print; None, "", [] and {} print nothing; floats and bools as str()."""
    data: dict[str, Any] = {"a": 0, "b": 0.0, "c": False, "d": None, "e": "", "f": [], "g": {}}
    data["h"] = 1.5
    assert assert_same("{{a}}|{{b}}|{{c}}|{{d}}|{{e}}|{{f}}|{{g}}|{{h}}|{{i}}", data) == (
        "0|0.0|False|||||1.5|"
    )


def test_non_string_values_print_with_str() -> None:
    """Lists and dicts print as Python writes them, then escaped."""
    data = {"l": ["<"], "d": {"k": '"'}, "t": True}
    assert assert_same("{{l}} {{d}} {{t}}", data) == "['&lt;'] {'k': '&quot;'} True"


def test_falsy_list_items_render_nothing() -> None:
    """A list section skips items that are falsy (0, "", {}, None, False)."""
    data = {"l": [0, 1, "", {}, None, False, 2.0, [], "s"]}
    assert assert_same("{{#l}}[{{.}}]{{/l}}", data) == "[1][2.0][s]"


def test_section_pushes_dicts_strings_and_numbers_as_one_scope() -> None:
    """A non-list truthy value is pushed once; a falsy one hides the section."""
    data = {"d": {"x": "in"}, "x": "out", "n": 3, "z": 0, "s": "str"}
    assert assert_same(
        "{{#d}}{{x}}{{/d}}{{#n}}{{.}}{{/n}}{{#z}}no{{/z}}{{#s}}{{.}}{{/s}}", data
    ) == ("in3str")


def test_keys_resolve_to_attributes_of_string_and_boolean_scopes() -> None:
    """In a string's section `{{upper}}` is `str.upper`; in a boolean's, `{{real}}` is 1."""
    data = {"s": "abc", "flag": True}
    out = assert_same("{{#s}}{{upper}}{{/s}}|{{#flag}}{{real}}{{denominator}}{{/flag}}", data)
    assert out.startswith("&lt;built-in method upper of str object")
    assert out.endswith("|11")


def test_an_integer_key_in_a_boolean_section_raises_like_chevron() -> None:
    """chevron's last probe, `True[0]`, raises TypeError; so does the compiled template."""
    with pytest.raises(TypeError):
        chevron_render("{{#flag}}{{0}}{{/flag}}", {"flag": True})
    with pytest.raises(TypeError):
        compiled("{{#flag}}{{0}}{{/flag}}").render({"flag": True})


def test_integer_keys_index_lists_and_strings() -> None:
    """`{{l.1}}` and `{{s.0}}` index a list and a string; out of range is empty."""
    assert assert_same("{{l.1}}{{s.0}}{{l.9}}", {"l": ["a", "b"], "s": "xyz"}) == "bx"


def test_dotted_key_broken_off_is_retried_in_outer_scopes() -> None:
    """`{{a.b}}` missing under the inner `a` is looked up again from the next scope."""
    assert assert_same(
        "{{#inner}}{{a.b}}{{/inner}}", {"inner": {"a": {}}, "a": {"b": "outer"}}
    ) == ("outer")


def test_dot_in_an_inverted_section_prints_the_scope_below() -> None:
    """Inside `{{^x}}` the innermost scope is True; escaped `{{.}}` prints the next one."""
    assert assert_same("{{#l}}{{^no}}{{.}}|{{{.}}}{{/no}}{{/l}}", {"l": ["a"]}) == "a|True"


def test_inverted_sections_show_for_falsy_and_missing_values() -> None:
    """`{{^x}}` shows for "", 0, None, [] and a missing key, hides for anything truthy."""
    template = "{{^a}}A{{/a}}{{^b}}B{{/b}}{{^c}}C{{/c}}{{^d}}D{{/d}}{{^e}}E{{/e}}{{^f}}F{{/f}}"
    assert assert_same(template, {"a": "", "b": 0, "c": None, "d": [], "f": "x"}) == "ABCDE"


def test_falsy_data_with_outer_scopes_renders_nothing() -> None:
    """chevron skips every tag while the innermost scope is falsy, unless it is the only one."""
    assert assert_same("x{{a}}", {}, {"a": 1}) == ""
    assert assert_same("x{{a}}", {"b": 1}, {"a": 1}) == "x1"
    assert assert_same("x{{.}}", 0) == "x0"


def test_custom_falsy_marker_is_honoured() -> None:
    """A value with `_CHEVRON_return_scope_when_falsy` is returned even when falsy."""

    class Falsy:
        _CHEVRON_return_scope_when_falsy = True

        def __bool__(self) -> bool:
            return False

        def __str__(self) -> str:
            return "falsy"

    class Unmarked(Falsy):
        _CHEVRON_return_scope_when_falsy = False  # chevron then tries the next scope

    assert assert_same("{{v}}", {"v": Falsy()}) == "falsy"
    assert assert_same("{{#inner}}{{v}}{{/inner}}", {"inner": {"v": Unmarked()}, "v": "o"}) == "o"


def test_partials_comments_and_delimiter_changes_render_nothing() -> None:
    """A partial (no path, no dictionary) is "", comments vanish, new delimiters apply."""
    source = "a{{> p}}b{{! note }}c{{=<% %>=}}<%x%>{{x}}<%={{ }}=%>{{{x}}}\n  {{> p}}\nd"
    assert assert_same(source, {"x": "<"}) == "abc&lt;{{x}}<\n  d"


def test_standalone_tags_leave_no_blank_lines() -> None:
    """The tokenizer drops standalone tag lines; the compiled tree keeps that."""
    source = "a\n  {{#l}}\n  - {{.}}\n  {{/l}}\nb\n"
    assert assert_same(source, {"l": ["x", "y"]}) == "a\n  - x\n  - y\nb\n"


# --- what goes to chevron itself -------------------------------------------------------


def test_lambdas_render_through_chevron() -> None:
    """A callable section value is chevron's lambda; the whole render falls back."""

    def bold(text: str, render: Callable[[str], str]) -> str:
        return "<b>" + render(text) + "</b>"

    assert assert_same("{{x}} {{#bold}}Hi {{name}}{{/bold}}", {"bold": bold, "name": "A", "x": 1})
    assert compiled("{{#b}}{{n}}{{/b}}").render({"b": bold, "n": "&"}) == "<b>&amp;</b>"


def test_iterators_are_left_for_chevron_to_consume() -> None:
    """A generator section value goes to chevron untouched, even when a later lambda is what
    makes the render fall back."""

    def items() -> Iterator[dict[str, int]]:
        yield from ({"n": n} for n in range(3))

    def twice(text: str, render: Callable[[str], str]) -> str:
        return render(text) * 2

    template = compiled("{{#it}}{{n}}{{/it}}|{{#twice}}x{{/twice}}")
    assert template.render({"it": items(), "twice": twice}) == "012|xx"


def test_string_subclasses_render_through_chevron() -> None:
    """A str subclass may override `__radd__`, which chevron's `output += value` calls."""

    class Shouting(str):
        def __radd__(self, other: str) -> str:
            return other.upper() + str(self)

    data = {"a": "x", "b": Shouting("y")}
    assert assert_same("{{a}}-{{{b}}}", data) == "X-y"


def test_same_name_inverted_section_inside_a_list_section_is_chevrons_bug() -> None:
    """chevron's end-tag scan ignores `{{^key}}`; such list sections fall back (and raise)."""
    assert_same("{{#a}}{{^a}}X{{/a}}Y{{/a}}Z", {"a": [1]})
    assert assert_same("{{#a}}{{^a}}X{{/a}}Y{{/a}}Z", {"a": True}) == "YZ"  # not a list: fine
    assert assert_same("{{#a}}{{#a}}X{{/a}}Y{{/a}}Z", {"a": [{"a": [1, 2]}]}) == "XXYZ"


# --- splitting around a loop -----------------------------------------------------------

LOOP = "head {{x}}\n{{#items}}\n[{{name}} {{x}}]\n{{/items}}\ntail {{#more}}{{x}}{{/more}}\n"


def test_split_parts_add_up_to_the_whole_render() -> None:
    """before + each item's body + after is what the whole template renders."""
    split = compiled(LOOP).split("items")
    assert split is not None
    before, body, after = split
    items: list[dict[str, Any]] = [{"name": "a"}, {}, {"name": "c", "x": 2}]
    data = {"x": "&", "items": items, "more": True}
    parts = [
        before.render(data),
        *(body.render(item, data) for item in items),
        after.render(data),
    ]
    assert "".join(parts) == chevron_render(LOOP, data)
    assert parts[2] == ""  # a falsy item renders nothing


def test_split_needs_a_top_level_section_chevron_loops_exactly() -> None:
    """No split for a missing or nested section, or one whose end chevron would misplace."""
    assert compiled(LOOP).split("more") is not None
    assert compiled(LOOP).split("name") is None
    assert compiled("{{#a}}{{#items}}{{/items}}{{/a}}").split("items") is None
    assert compiled("{{^items}}{{/items}}").split("items") is None
    assert compiled("{{#items}}{{^items}}{{/items}}{{/items}}").split("items") is None


def test_unbalanced_tokens_are_refused() -> None:
    """Only balanced token lists (as chevron's tokenizer makes) compile."""
    with pytest.raises(ValueError, match="unbalanced"):
        Template([("end", "a")])
    with pytest.raises(ValueError, match="unclosed"):
        Template([("section", "a")])


# --- any template, any data -------------------------------------------------------------

_NAMES = ("a", "b", "items", "0", "real", "upper")
_KEYS = st.one_of(
    st.sampled_from(_NAMES),
    st.just("."),
    st.lists(st.sampled_from(_NAMES), min_size=2, max_size=3).map(".".join),
)
_LITERAL = st.text(alphabet="ab <>&\"'\n\t.é}{", min_size=1, max_size=8)


def _tag(kind: str, key: str, pad: bool) -> str:
    space = " " if pad else ""
    return "{{" + kind + space + key + space + "}}"


_LEAVES = st.one_of(
    _LITERAL,
    st.builds(_tag, st.sampled_from(["", "&", "!"]), _KEYS, st.booleans()),
    _KEYS.map(lambda key: "{{{" + key + "}}}"),
    st.just("{{> p}}"),
    _KEYS.map(lambda key: "{{=<% %>=}}<%" + key + "%><%={{ }}=%>"),
)


def _sections(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    section = st.builds(
        lambda kind, key, inner, newline: f"{{{{{kind}{key}}}}}{newline}{inner}{{{{/{key}}}}}",
        st.sampled_from(["#", "^"]),
        _KEYS,
        body,
        st.sampled_from(["", "\n", "\n  "]),
    )
    return st.lists(st.one_of(body, section), min_size=1, max_size=4).map("".join)


TEMPLATES = st.recursive(
    st.lists(_LEAVES, min_size=1, max_size=4).map("".join), _sections, max_leaves=12
)
_SCALARS = st.one_of(
    st.text(alphabet="xy<>&\"' \n", max_size=5),
    st.integers(-2, 2),
    st.floats(allow_nan=False, width=16),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=2).map(tuple),
        st.dictionaries(st.sampled_from(_NAMES), inner, max_size=4),
    ),
    max_leaves=10,
)
DATA = st.one_of(st.dictionaries(st.sampled_from(_NAMES), VALUES, min_size=1, max_size=6), VALUES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=TEMPLATES, data=DATA, parents=st.lists(DATA, max_size=2))
def test_any_template_renders_like_chevron(source: str, data: Any, parents: list[Any]) -> None:
    """Random templates of every tag kind over random nested data: chevron's exact output."""
    try:
        tokens = list(tokenize(source))
    except (ChevronError, IndexError, ValueError):
        reject()  # not a template chevron can parse
    scopes = [data, *parents]
    try:
        expected = chevron_render(source, *scopes)
    except Exception as exc:  # chevron's own crashes: the compiled template fails alike
        with pytest.raises(type(exc)):
            Template(tokens).render(*scopes)
        return
    assert Template(tokens).render(*scopes) == expected
