from __future__ import annotations

import pytest

from notifications.services.templating import (
    TemplateRenderError,
    merge_substitute,
    template_check,
    template_merge_exact,
    template_render,
)


def test_it_renders_event_data():
    assert template_render(source="Order {{ data.id }}", context={"data": {"id": 7}}) == "Order 7"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ data|attr('__class__') }}",
        "{{ data.update({'x': 1}) }}",
    ],
)
def test_it_refuses_template_injection(source):
    with pytest.raises(TemplateRenderError):
        template_render(source=source, context={"data": {}})


def test_it_fails_loudly_on_a_missing_variable():
    with pytest.raises(TemplateRenderError, match="order_id"):
        template_render(source="{{ data.order_id }}", context={"data": {}})


def test_it_escapes_html_in_variables_for_html_parts():
    out = template_render(
        source="<p>{{ data.name }}</p>", context={"data": {"name": "<script>x</script>"}}, html=True
    )
    assert out == "<p>&lt;script&gt;x&lt;/script&gt;</p>"


def test_it_reports_syntax_errors_before_saving():
    assert template_check(source="{{ data.x ") is not None
    assert template_check(source="{{ data.x }}") is None


@pytest.mark.parametrize(
    ("source", "exact"),
    [
        ("{{ data.x }} for {{ recipient.name }} ({{ recipient.external_id }})", True),
        ("{{ recipient.locale }}: {{ recipient.name }}", True),
        ("No recipient at all", True),
        ("Hi {{ recipient.name|upper }}", False),
        ("{% if recipient.name %}Hi{% endif %}", False),
        ("{{ recipient['name'] }}", False),
        ("{{ recipient.name ~ '!' }}", False),
        ("{% set n = recipient.name %}{{ n }}", False),
        ("{% for r in [recipient] %}{{ r.name }}{% endfor %}", False),
        ("{% set recipient = data %}{{ recipient.name }}", False),
        ("{% autoescape false %}{{ recipient.name }}{% endautoescape %}", False),
    ],
    ids=[
        "printed",
        "locale",
        "none",
        "filter",
        "condition",
        "item",
        "concat",
        "set",
        "loop",
        "shadowed",
        "autoescape",
    ],
)
def test_a_template_is_filled_in_per_recipient_exactly_only_when_it_just_prints_their_fields(source, exact):
    assert template_merge_exact(source) is exact


def test_filling_in_placeholders_is_one_pass_and_empties_unknown_names():
    values = {"name": "%recipient.external_id%", "external_id": "u1"}
    assert merge_substitute("%recipient.name% / %recipient.x% / %recipient.external_id%", values) == (
        "%recipient.external_id% /  / u1"
    )
