"""Secret redaction: provider patterns plus detect-secrets' plugins, end to end through ingest.

Every planted value is invented (random characters in the provider's real format) and built from
pieces at run time, so this file holds no string that a secret scanner would take for a key.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tooldistill.executor import LocalExecutor
from tooldistill.ingest import IngestConfig, ingest
from tooldistill.redact import KINDS, Redactor

ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"


def _random(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def planted() -> list[tuple[str, str, str]]:
    """(expected kind, the line as it would appear in a pasted .env/config, the secret value)."""
    rng = random.Random(17)
    r = lambda alphabet, n: _random(rng, alphabet, n)  # noqa: E731
    sk, live = "sk", "live"
    pem_body = [r(B64, 64) for _ in range(4)]
    items: list[tuple[str, str, str]] = []

    def add(kind: str, line: str, value: str) -> None:
        assert value in line
        items.append((kind, line, value))

    v = "-".join(["sk", "ant", "api03", r(ALNUM + "_-", 48)])
    add("anthropic_key", f"ANTHROPIC_API_KEY={v}", v)
    v = "-".join(["sk", "proj", r(ALNUM, 48)])
    add("openai_key", f"export OPENAI_API_KEY={v}", v)
    v = "AKIA" + r(string.ascii_uppercase + string.digits, 16)
    add("aws_access_key_id", f"AWS_ACCESS_KEY_ID={v}", v)
    v = r(B64, 40)
    add("aws_secret_access_key", f"aws_secret_access_key = {v}", v)
    v = "gh" + "p_" + r(ALNUM, 36)
    add("github_token", f"GITHUB_TOKEN={v}", v)
    v = "gl" + "pat-" + r(ALNUM, 20)
    add("gitlab_token", f"git remote set-url origin https://oauth2:{v}@gitlab.corp.internal/x.git", v)
    v = "hf" + "_" + r(ALNUM, 34)
    add("huggingface_token", f"HF_TOKEN={v}", v)
    v = "xo" + "xb-" + r(string.digits, 12) + "-" + r(string.digits, 12) + "-" + r(ALNUM, 24)
    add("slack_token", f"SLACK_BOT={v}", v)
    v = "AI" + "za" + r(ALNUM + "_-", 35)
    add("google_api_key", f"maps: {{key: {v}}}", v)
    v = "GOC" + "SPX-" + r(ALNUM + "_-", 28)
    add("google_oauth_secret", f"GOOGLE_CLIENT_SECRET={v}", v)
    v = f"{sk}_{live}_" + r(ALNUM, 99)
    add("stripe_key", f"STRIPE_SECRET_KEY={v}", v)
    v = "wh" + "sec_" + r(ALNUM, 32)
    add("stripe_webhook_secret", f"STRIPE_WEBHOOK={v}", v)
    v = "SG." + r(ALNUM + "_-", 22) + "." + r(ALNUM + "_-", 43)
    add("sendgrid_key", f"SENDGRID={v}", v)
    v = "np" + "m_" + r(ALNUM, 36)
    add("npm_token", f"//registry.npmjs.org/:_authToken={v}", v)
    v = "AC" + r(HEX, 32)
    add("twilio_key", f"TWILIO_ACCOUNT_SID={v}", v)
    v = r(HEX, 32)
    add("secret_keyword", f"TWILIO_AUTH_TOKEN={v}", v)
    header, payload = (
        _b64url({"alg": "HS256", "typ": "JWT"}),
        _b64url({"sub": r(string.digits, 10), "role": "admin"}),
    )
    v = f"{header}.{payload}.{r(ALNUM + '_-', 43)}"
    add("jwt", f"SESSION_JWT={v}", v)
    add(
        "private_key",
        "-----BEGIN RSA " + "PRIVATE KEY-----\n" + "\n".join(pem_body) + "\n-----END RSA PRIVATE KEY-----",
        pem_body[1],
    )
    v = r(ALNUM, 16)
    add("basic_auth", f"DATABASE_URL=postgres://app_user:{v}@db.internal:5432/shop", v)
    v = r(ALNUM, 14) + "!"
    add("basic_auth", f"curl https://deploy:{v}@git.corp.internal/repo.git", v)
    v = r(HEX, 64)
    add("secret_keyword", f"SECRET_KEY={v}", v)
    v = "Tr0ub4dor&3" + r(ALNUM, 4)
    add("secret_keyword", f"password: {v}", v)
    v = r(HEX, 40)
    add("secret_keyword", f'  "private_key_id": "{v}",', v)
    v = r(B64, 86) + "=="
    add(
        "azure_storage_key",
        f"AZURE_STORAGE=DefaultEndpointsProtocol=https;AccountName=shopdata;AccountKey={v};EndpointSuffix=core.windows.net",
        v,
    )
    v = r(HEX, 32) + "-us14"
    add("mailchimp_key", f"MC={v}", v)
    v = "M" + r(ALNUM, 23) + "." + r(ALNUM, 6) + "." + r(ALNUM + "_-", 27)
    add("discord_token", f"DISCORD_BOT={v}", v)
    v = "sq0" + "csp-" + r(ALNUM + "_-", 43)
    add("square_oauth_secret", f"SQUARE={v}", v)
    v = base64.b64encode(f"deploy:{r(ALNUM, 12)}".encode()).decode()
    add("basic_auth", f"Authorization: Basic {v}", v)
    v = r(ALNUM, 24) + "." + r(ALNUM, 16)
    add("bearer_token", f"curl -H 'Authorization: Bearer {v}' https://api.corp.internal/v1/orders", v)
    v = r(HEX, 40)
    add("auth_header", f"curl -H 'Authorization: Token {v}' https://api.corp.internal/v1/stock", v)
    v = r(ALNUM, 30) + "+" + r(ALNUM, 13) + "="
    add("high_entropy_base64", f'SIGNING_BLOB="{v}"', v)
    v = "pypi" + "-AgEIcHlwaS5vcmc" + r(ALNUM + "_-", 60)
    add("pypi_token", f"TWINE={v}", v)
    v = "dop" + "_v1_" + r(HEX, 64)
    add("digitalocean_token", f"DO={v}", v)
    v = "dapi" + r(HEX, 32)
    add("databricks_token", f"DATABRICKS={v}", v)
    v = "shp" + "at_" + r(HEX, 32)
    add("shopify_token", f"SHOPIFY={v}", v)
    return items


PLANTED = planted()
#: A tool call's argument under a key that names a secret (no pattern in the value itself).
KEYED = ("api_key", "q7Lm2Xv9Rt4Bn8Kc" + "Zp3W")
ENV = "\n".join(line for _, line, _ in PLANTED)
VALUES = [value for _, _, value in PLANTED] + [KEYED[1]]


def line_of(text: str) -> str:
    """The planted line that contains ``text``."""
    return next(line for _, line, _ in PLANTED if text in line)


def test_every_planted_kind_is_replaced_with_its_kind():
    assert len({kind for kind, _, _ in PLANTED}) >= 20
    for kind, line, value in PLANTED:
        redactor = Redactor()
        out = redactor.text(line)
        assert value not in out, (kind, out)
        assert f"[REDACTED:{kind}]" in out, (kind, out)
        assert kind in redactor.counts, (kind, dict(redactor.counts))
        assert kind in KINDS


def test_whole_env_file_and_labels_kept():
    redactor = Redactor()
    out = redactor.text(ENV)
    for value in VALUES[:-1]:
        assert value not in out
    # only the value goes: the name in front of it stays
    assert "STRIPE_SECRET_KEY=[REDACTED:stripe_key]" in out
    assert "postgres://app_user:[REDACTED:basic_auth]@db.internal" in out
    assert "password: [REDACTED:secret_keyword]" in out
    assert sum(redactor.counts.values()) >= len(PLANTED)


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


def test_nested_values_and_keyed_secrets():
    redactor = Redactor()
    assert redactor.text("skip the task, ask the user") == "skip the task, ask the user"
    value = {"env": ["OPENAI_API_KEY=sk-proj-" + "x" * 30], "n": 3, KEYED[0]: KEYED[1], "city": "Lisbon"}
    assert redactor.value(value) == {
        "env": ["OPENAI_API_KEY=[REDACTED:openai_key]"],
        "n": 3,
        KEYED[0]: "[REDACTED:secret_keyword]",
        "city": "Lisbon",
    }
    assert Redactor(enabled=False).text("sk-ant-" + "y" * 30).startswith("sk-ant-")
    # a key that names a secret with a value that is a name, not a secret
    assert redactor.value({"api_key_env": "ANTHROPIC_API_KEY", "token": "required"}) == {
        "api_key_env": "ANTHROPIC_API_KEY",
        "token": "required",
    }


HEX40 = "4f3c2a9b8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b"
AUTH_HEADERS = [
    # (text, the secret, what stays of the header)
    (f"curl -H 'Authorization: Token {HEX40}' https://api.corp.internal/v1", HEX40, "Authorization: Token "),
    (f'{{"Authorization": "Token {HEX40}", "Accept": "application/json"}}', HEX40, '"Token '),
    (f'{{\\"Authorization\\": \\"Token {HEX40}\\"}}', HEX40, '\\"Token '),
    (f"{{'Authorization': 'ApiKey {HEX40[:24]}'}}", HEX40[:24], "'ApiKey "),
    ("Authorization: Bot MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7v", "MTk4NjIyNDgzNDcxOTI1MjQ4", "Bot "),
    (f"Proxy-Authorization: Token {HEX40}", HEX40, "Proxy-Authorization: Token "),
    (f"Authorization: {HEX40}", HEX40, "Authorization: "),
    (f'req.Header.Set("Authorization", "Key {HEX40}")', HEX40, '"Key '),
    (
        'Authorization: Digest username="ana", realm="shop", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",'
        ' uri="/orders", response="6629fae49393a05397450978507c4ef1"',
        "6629fae49393a05397450978507c4ef1",
        "Authorization: Digest ",
    ),
    (
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        " SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        "AWS4-HMAC-SHA256 ",
    ),
]


@pytest.mark.parametrize(("text", "secret", "kept"), AUTH_HEADERS)
def test_authorization_header_of_any_scheme_is_replaced(text, secret, kept):
    redactor = Redactor()
    out = redactor.text(text)
    assert secret not in out, out
    assert f"{kept}[REDACTED:auth_header]" in out, out
    assert redactor.counts["auth_header"] == 1


def test_authorization_header_kinds_and_values_in_variables():
    # a Bearer or Basic value the longer patterns leave is named by its scheme
    redactor = Redactor()
    assert (
        redactor.text("Authorization: Bearer 9f8e7d6c5b4a") == "Authorization: Bearer [REDACTED:bearer_token]"
    )
    assert redactor.counts == {"bearer_token": 1}
    # the value of a Bash tool call in a trace
    assert Redactor().value({"command": AUTH_HEADERS[0][0]}) == {
        "command": "curl -H 'Authorization: Token [REDACTED:auth_header]' https://api.corp.internal/v1"
    }
    for text in (
        'curl -H "Authorization: Token $API_TOKEN" https://api.corp.internal/v1',
        'headers = {"Authorization": f"Token {token}"}',
        'headers.set("Authorization", "Bearer " + token)',
        "Authorization: Token ${SHOP_TOKEN}",
        "Authorization: Token <your-token>",
        "Authorization: Token YOUR_API_TOKEN",
        "def orders(authorization: str = Header(None)) -> list[Order]:",
        "The Authorization header carries the token; authorization: required",
        "Authorization, Accept and Content-Type headers are forwarded.",
    ):
        redactor = Redactor()
        assert redactor.text(text) == text
        assert not redactor.counts


ORDINARY = [
    "skip the task, ask the user",
    "def get_token(self, token: str) -> str:\n    return self._tokens[token]",
    "password = os.environ['DB_PASSWORD']",
    "api_key = get_secret('anthropic')",
    "token: Optional[str] = None",
    "The API key must be set in the environment before the first request.",
    "Use a strong password: at least twelve characters, mixed case.",
    "secret_name: prod/db-credentials",
    "commit 3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a\nAuthor: Ana <ana@shop.example>",
    "git checkout 9fceb02 && git cherry-pick 1a410efbd13591db07496601ebc7a059dd55cfe9",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "request 123e4567-e89b-12d3-a456-426614174000 took 35 ms",
    "/home/dev/project0/src/tooldistill/readers/claude_code.py:412: in _decision",
    "/usr/lib/python3.11/site-packages/transformers/models/llama/modeling_llama.py",
    "https://github.com/bridgecrewio/detect-secrets/blob/master/README.md",
    "Optional HTTP proxy, in the format 'http://user:password@host:port'.",
    "ERROR: Could not find a version that satisfies the requirement torch==2.13.0",
    '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}',
    '{"name": "get_stock_price", "arguments": {"ticker": "AAPL", "exchange": "NASDAQ"}}',
    "Find the max tokens for model claude-sonnet-4-5-20250929 with input_tokens=1200",
    "SELECT count(*) FROM orders WHERE placed_at::date = current_date - 1",
    "const accessTokenExpiry = 3600; // seconds",
    "export PATH=/opt/conda/bin:$PATH && pip install -e '.[dev,cpu]'",
    "eyes on the prize; SG.1 is the first section; npm_config_cache is set",
    "tokenizer: /models/smollm2-135m\nprivate_key_path: ./keys/dev-2024.pem\nKEY_FILE=~/.ssh/id_ed25519",
    "secret: s3://bucket/runs/x2\nsecret_arn: arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
    '"usage": {"input_tokens": 1200, "cache_read_input_tokens": 14200, "output_tokens": 55}',
    "export GITHUB_TOKEN=$(gh auth token) && tooldistill run configs/demo.yaml --api-key-env TD_KEY",
    "password_hash = bcrypt.hashpw(password.encode(), salt)",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged(text):
    redactor = Redactor()
    assert redactor.text(text) == text
    assert not redactor.counts


def test_ordinary_values_are_unchanged():
    value = {
        "file_path": "/home/ana/shop/app/settings.py",
        "sha": "1a410efbd13591db07496601ebc7a059dd55cfe9",
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "password_field": "password",
        "token_limit": 4096,
        "api_key": "YOUR_API_KEY",
        "auth_token": "${AUTH_TOKEN}",
    }
    redactor = Redactor()
    assert redactor.value(value) == value
    assert not redactor.counts


# ---------------------------------------------------------------------------------------------
# end to end: every file ingest writes is free of every planted value


def _claude_code_session(folder: Path) -> None:
    session = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    base = {"isSidechain": False, "userType": "external", "cwd": "/home/ana/shop", "sessionId": session}
    base |= {"version": "2.1.9", "gitBranch": "main"}
    lines = [
        base
        | {"parentUuid": None, "type": "user", "uuid": "u1", "timestamp": "2025-11-30T09:00:00.000Z"}
        | {"message": {"role": "user", "content": "Deploy with these settings:\n" + ENV}},
        base
        | {"parentUuid": "u1", "type": "assistant", "uuid": "a1", "timestamp": "2025-11-30T09:01:00.000Z"}
        | {
            "message": {
                "id": "msg_01Env",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {"type": "text", "text": "Reading the env file."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01Env",
                        "name": "Bash",
                        "input": {"command": "cat .env"},
                    },
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 9, "output_tokens": 5},
            }
        },
        base
        | {"parentUuid": "a1", "type": "user", "uuid": "u2", "timestamp": "2025-11-30T09:02:00.000Z"}
        | {
            "message": {
                "role": "user",
                "content": [{"tool_use_id": "toolu_01Env", "type": "tool_result", "content": ENV}],
            }
        }
        | {"toolUseResult": {"stdout": ENV, "stderr": "", "interrupted": False}},
        base
        | {"parentUuid": "u2", "type": "assistant", "uuid": "a2", "timestamp": "2025-11-30T09:03:00.000Z"}
        | {
            "message": {
                "id": "msg_02Call",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_02Call",
                        "name": "Bash",
                        "input": {"command": line_of("Bearer"), "description": ENV, KEYED[0]: KEYED[1]},
                    }
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 9, "output_tokens": 5},
            }
        },
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    # a line cut short (quarantined, with an excerpt) that holds secrets
    text += json.dumps(base | {"type": "user", "message": {"role": "user", "content": ENV}})[:-40] + "\n"
    folder.mkdir(parents=True)
    (folder / f"{session}.jsonl").write_text(text, encoding="utf-8")


def _stream_json(folder: Path) -> None:
    session = "5c5c5c5c-1111-4222-8333-444455556666"
    gcp = json.dumps(
        {
            "type": "service_account",
            "project_id": "shop-prod",
            "private_key_id": line_of("private_key_id").split('"')[3],
            "private_key": line_of("PRIVATE KEY-----") + "\n",
            "client_email": "deployer@shop-prod.iam.gserviceaccount.com",
        },
        indent=2,
    )
    events = [
        {
            "type": "system",
            "subtype": "init",
            "cwd": "/srv/etl",
            "session_id": session,
            "tools": ["Bash", "Read"],
        }
        | {"model": "claude-sonnet-4-5-20250929", "permissionMode": "default", "apiKeySource": "none"},
        {"type": "user", "message": {"role": "user", "content": "Load the warehouse with:\n" + ENV}}
        | {"session_id": session},
        {
            "type": "assistant",
            "message": {
                "id": "msg_01S",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01R",
                        "name": "Read",
                        "input": {"file_path": "/srv/etl/sa.json"},
                    }
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 800, "output_tokens": 60},
            },
            "session_id": session,
        },
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"tool_use_id": "toolu_01R", "type": "tool_result", "content": gcp}],
            },
        }
        | {"session_id": session},
        {
            "type": "assistant",
            "message": {
                "id": "msg_02S",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_02B",
                        "name": "Bash",
                        "input": {"command": ENV, KEYED[0]: KEYED[1]},
                    }
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 900, "output_tokens": 60},
            },
            "session_id": session,
        },
        {"type": "result", "subtype": "success", "is_error": False, "result": "done", "session_id": session},
    ]
    text = "".join(json.dumps(event) + "\n" for event in events)
    text += '{"type": "user", "message": {"content": ' + json.dumps(ENV) + "\n"  # cut short: quarantined
    folder.mkdir(parents=True)
    (folder / "etl.jsonl").write_text(text, encoding="utf-8")


def _api_log(folder: Path) -> None:
    tools = [
        {
            "name": "deploy",
            "description": "Deploy the shop",
            "input_schema": {
                "type": "object",
                "properties": {"env": {"type": "string"}, "api_key": {"type": "string"}},
            },
        }
    ]
    record = {
        "request": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You deploy services. Credentials for this session:\n" + ENV,
            "tools": tools,
            "messages": [{"role": "user", "content": "Deploy it with:\n" + ENV}],
        },
        "response": {
            "id": "msg_01Api",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "text", "text": "Deploying."},
                {
                    "type": "tool_use",
                    "id": "toolu_01D",
                    "name": "deploy",
                    "input": {"env": ENV, KEYED[0]: KEYED[1]},
                },
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 1200, "output_tokens": 80},
        },
    }
    error = {
        "request": record["request"],
        "response": {"type": "error", "error": {"type": "x", "message": ENV}},
    }
    text = json.dumps(record) + "\n" + json.dumps(error) + "\n" + json.dumps(record)[:-30] + "\n"
    folder.mkdir(parents=True)
    (folder / "requests.jsonl").write_text(text, encoding="utf-8")


def _output_text(root: Path) -> str:
    """Every file under ``root`` as text: Parquet decoded to its rows, the rest as written."""
    texts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        else:
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("fmt", "write"),
    [("claude_code", _claude_code_session), ("claude_code", _stream_json), ("anthropic", _api_log)],
    ids=["claude_code", "stream_json", "api_log"],
)
def test_no_planted_secret_in_any_file_ingest_writes(tmp_path, fmt, write):
    write(tmp_path / "logs")
    out = tmp_path / "traces"
    result = ingest(
        IngestConfig(sources=(str(tmp_path / "logs"),), format=fmt, out=str(out)),
        LocalExecutor(show_progress=False),
    )
    manifest = result.dataset.manifest
    assert manifest.rows >= 1 and manifest.quarantine.total >= 1
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name.startswith("quarantine") for p in files)
    written = _output_text(out)
    assert "[REDACTED:" in written
    leaked = [(kind, value) for kind, _, value in PLANTED if value in written]
    leaked += [("keyed", KEYED[1])] if KEYED[1] in written else []
    assert not leaked
    # JSON-escaped forms too (a value with a character JSON escapes)
    assert not [v for v in VALUES if json.dumps(v)[1:-1] in written]
    counts = manifest.stats["secrets_redacted"]
    expected = {kind for kind, _, _ in PLANTED}
    assert expected <= set(counts), expected - set(counts)
    assert all(count > 0 for count in counts.values())


def test_redact_report_lists_kinds_and_counts_never_values(tmp_path):
    from click.testing import CliRunner

    from tooldistill.cli import main
    from tooldistill.optimize.testing import make_traces, write_traces
    from tooldistill.store import Dataset

    _api_log(tmp_path / "logs")
    run = tmp_path / "run"
    ingest_args = ["ingest", str(tmp_path / "logs"), "--format", "anthropic", "--executor", "local"]
    result = CliRunner().invoke(main, [*ingest_args, "--out", str(run / "traces"), "--redact-report"])
    assert result.exit_code == 0, result.output
    counts = Dataset.open(str(run / "traces")).manifest.stats["secrets_redacted"]
    assert len(counts) >= 20
    text = " ".join(result.output.split())
    assert all(kind in text for kind in counts)
    assert not [value for value in VALUES if value in result.output]
    # the same logs without redaction, and a dataset made by a stage that redacts nothing itself
    raw = CliRunner().invoke(main, [*ingest_args, "--out", str(run / "raw"), "--no-redact"])
    assert raw.exit_code == 0, raw.output
    write_traces(str(run / "curate" / "split"), make_traces(3))

    report = CliRunner().invoke(main, ["redact-report", str(run), "--json"])
    assert report.exit_code == 0, report.output
    rows = {row["dataset"]: row for row in json.loads(report.stdout)["datasets"]}
    assert rows["traces"] == {
        "dataset": "traces",
        "stage": "ingest",
        "redaction": "on",
        "secrets_redacted": counts,
        "total": sum(counts.values()),
    }
    assert rows["raw"]["redaction"] == "off" and rows["raw"]["secrets_redacted"] == {}
    assert json.loads(report.stdout)["without_counts"] == ["curate/split"]
    table = CliRunner().invoke(main, ["redact-report", str(run)])
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "off" in text and "none found" in text and str(sum(counts.values())) in text
    assert "1 more datasets record no redaction of their own" in text and "curate/split" in text
    assert not [value for value in VALUES if value in table.output]
    # one dataset on its own
    single = CliRunner().invoke(main, ["redact-report", str(run / "traces"), "--json"])
    assert [r["dataset"] for r in json.loads(single.stdout)["datasets"]] == ["."]
    # nothing there
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        missing = CliRunner().invoke(main, ["redact-report", str(target)])
        assert missing.exit_code == 2 and "Traceback" not in missing.output
