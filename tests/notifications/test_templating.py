from __future__ import annotations

import pytest

from notifications.services.templating import TemplateRenderError, template_check, template_render


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
