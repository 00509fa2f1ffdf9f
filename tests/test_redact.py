from tooldistill.redact import Redactor


def test_known_secret_shapes_are_replaced_and_counted():
    redactor = Redactor()
    text = (
        "key sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123 and AKIAABCDEFGHIJKLMNOP, "
        "aws_secret_access_key = abcdefghijklmnopqrstuvwxyz0123456789ABCD "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig ghp_" + "a" * 36
    )
    out = redactor.text(text)
    assert "sk-ant-api03" not in out and "AKIAABCDEFGHIJKLMNOP" not in out
    assert "abcdefghijklmnopqrstuvwxyz0123456789ABCD" not in out and "eyJhbGci" not in out
    assert "[REDACTED:anthropic_key]" in out and "Bearer [REDACTED:bearer_token]" in out
    assert redactor.counts == {
        "anthropic_key": 1,
        "aws_access_key_id": 1,
        "aws_secret_access_key": 1,
        "bearer_token": 1,
        "github_token": 1,
    }


def test_ordinary_text_and_nested_values():
    redactor = Redactor()
    assert redactor.text("skip the task, ask the user") == "skip the task, ask the user"
    value = {"env": ["OPENAI_API_KEY=sk-proj-" + "x" * 30], "n": 3}
    assert redactor.value(value) == {"env": ["OPENAI_API_KEY=[REDACTED:openai_key]"], "n": 3}
    assert Redactor(enabled=False).text("sk-ant-" + "y" * 30).startswith("sk-ant-")
