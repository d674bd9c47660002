"""Tests of codeq.config: layering, validation, masking and state directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeq.config import Config, ConfigError, add_flags, flags_from_args, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SECRET = "s3cr3t-passw0rd-value"
TOKEN = "tok-abcdefghijklmnopqrstuvwxyz"


def write_yaml(tmp_path: Path, document: Any, name: str = "codeq.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def load_error(**kwargs: Any) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


def static_config(**extra: Any) -> dict[str, Any]:
    return {
        "producerAuthProvider": "static",
        "workerAuthProvider": "static",
        "staticTokens": {TOKEN: {"sub": "alice", "tenantId": "acme"}},
        **extra,
    }


# ---------------------------------------------------------------- layering


def test_defaults_without_any_source() -> None:
    """No file, no environment and no flags give Config()."""
    config = load_config(environ={})
    assert config == Config()
    assert config.port == 8080
    assert config.dev_mode


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    """Values in the YAML file replace the defaults."""
    path = write_yaml(tmp_path, {"port": 9000, "logLevel": "debug", "transports": ["http", "ws"]})
    config = load_config(path, environ={})
    assert (config.port, config.log_level, config.transports) == (9000, "debug", ("http", "ws"))


def test_empty_yaml_file_is_defaults(tmp_path: Path) -> None:
    """An empty YAML file is allowed and changes nothing."""
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path, environ={}) == Config()


def test_env_beats_yaml(tmp_path: Path) -> None:
    """An environment variable wins over the YAML file."""
    path = write_yaml(tmp_path, {"port": 9000, "backoffPolicy": "fixed"})
    config = load_config(path, environ={"PORT": "9100"})
    assert (config.port, config.backoff_policy) == (9100, "fixed")


def test_flags_beat_env(tmp_path: Path) -> None:
    """A flag wins over the environment and the file."""
    path = write_yaml(tmp_path, {"port": 9000})
    config = load_config(path, environ={"PORT": "9100"}, flags={"port": "9200"})
    assert config.port == 9200


def test_none_flags_are_not_given() -> None:
    """A flag whose value is None leaves the lower layers alone."""
    config = load_config(environ={"PORT": "9100"}, flags={"port": None, "log_level": None})
    assert config.port == 9100


def test_env_values_are_parsed() -> None:
    """Env strings become ints, floats, bools and lists."""
    environ = {
        "MAX_ATTEMPTS_DEFAULT": "7",
        "SHUTDOWN_GRACE_SECONDS": "2.5",
        "ALLOW_PRODUCER_AS_WORKER": "yes",
        "TRANSPORTS": "http, websocket",
        "LOG_LEVEL": "WARN",
        "LOG_FORMAT": "text",
    }
    config = load_config(environ=environ)
    assert config.max_attempts_default == 7
    assert config.shutdown_grace_seconds == 2.5
    assert config.allow_producer_as_worker is True
    assert config.transports == ("http", "websocket")
    assert (config.log_level, config.log_format) == ("warning", "console")


def test_empty_env_for_optional_string_is_unset(tmp_path: Path) -> None:
    """An empty variable for an optional string leaves the file's value in place."""
    path = write_yaml(tmp_path, {"redisAddr": "localhost:6379"})
    config = load_config(path, environ={"REDIS_ADDR": "", "REDIS_PASSWORD": ""})
    assert (config.redis_addr, config.redis_password) == ("localhost:6379", None)


def test_foreign_env_variables_are_ignored() -> None:
    """Variables that are not codeq's do not matter, even if they look like keys."""
    environ = {"HOME": "/x", "bindAddress": "nonsense value", "STATIC_TOKENS": "x"}
    assert load_config(environ=environ) == Config()


def test_redis_address_forms_are_accepted() -> None:
    """host:port, redis://, rediss:// and unix:// addresses all load."""
    for addr in (
        "localhost:6379",
        "10.0.0.5:6666",
        "[::1]:6379",
        "redis://user:pw@kvrocks:6666/0",
        "rediss://kvrocks.internal:6380",
        "unix:///run/redis/redis.sock",
    ):
        assert load_config(environ={"REDIS_ADDR": addr}).redis_addr == addr


def test_flags_from_argparse_round_trip(tmp_path: Path) -> None:
    """add_flags + flags_from_args feed load_config, --config included."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    path = write_yaml(tmp_path, {"port": 9000})
    ns = parser.parse_args(
        ["--config", str(path), "--log-level", "error", "--transports", "http,unix"]
    )
    flags = flags_from_args(ns)
    assert flags == {"log_level": "error", "transports": "http,unix"}
    config = load_config(ns.config, environ={}, flags=flags)
    assert (config.port, config.log_level, config.transports) == (9000, "error", ("http", "unix"))


def test_flag_help_names_env_variable() -> None:
    """Each flag's help text names its environment variable."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    help_text = parser.format_help()
    assert "--default-lease-seconds" in help_text
    assert "DEFAULT_LEASE_SECONDS" in help_text
    assert "--static-tokens" not in help_text


# ---------------------------------------------------------------- bad input


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A config path that does not exist is an error naming it."""
    path = tmp_path / "nope.yaml"
    assert str(path) in load_error(path=path)


def test_unknown_key_is_named_with_suggestion(tmp_path: Path) -> None:
    """An unknown YAML key stops the load, names the key and suggests a close one."""
    message = load_error(path=write_yaml(tmp_path, {"prot": 9000}))
    assert "'prot'" in message
    assert "did you mean 'port'" in message


def test_snake_case_key_suggests_camel_case(tmp_path: Path) -> None:
    """A snake_case key suggests its camelCase spelling."""
    message = load_error(path=write_yaml(tmp_path, {"redis_addr": "localhost:6379"}))
    assert "did you mean 'redisAddr'" in message


def test_non_mapping_yaml_is_refused(tmp_path: Path) -> None:
    """A YAML document that is not a mapping is an error naming the file."""
    path = write_yaml(tmp_path, ["port", 9000])
    assert "mapping" in load_error(path=path)


def test_invalid_yaml_syntax_is_refused(tmp_path: Path) -> None:
    """Broken YAML is an error with a position, not a traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text("port: [9000\n", encoding="utf-8")
    assert "not valid YAML" in load_error(path=path)


def test_bad_int_from_env_names_key_and_variable() -> None:
    """A non-integer env value names the YAML key, the env variable and the value."""
    message = load_error(environ={"PORT": "abc"})
    assert message.startswith("config key 'port' (env PORT): must be an integer")
    assert "'abc'" in message


def test_out_of_range_int_is_refused() -> None:
    """An integer outside its range names the key and the range."""
    message = load_error(environ={"HISTORY_LIMIT": "2"})
    assert "'historyLimit' (env HISTORY_LIMIT)" in message
    assert "between 4 and 1000" in message


def test_wrong_yaml_type_names_key_and_file(tmp_path: Path) -> None:
    """A string where YAML needs an integer names the key and the file."""
    path = write_yaml(tmp_path, {"defaultLeaseSeconds": "300"})
    message = load_error(path=path)
    assert f"config key 'defaultLeaseSeconds' (file {path})" in message


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    """YAML true is refused for an integer setting."""
    assert "'maxBodyBytes'" in load_error(path=write_yaml(tmp_path, {"maxBodyBytes": True}))


def test_bad_float_from_env_is_refused() -> None:
    """A non-finite or non-numeric float env value is refused."""
    for raw in ("nan", "inf", "ten"):
        message = load_error(environ={"SHUTDOWN_GRACE_SECONDS": raw})
        assert "(env SHUTDOWN_GRACE_SECONDS)" in message


def test_bad_bool_from_env_is_refused() -> None:
    """A bool env value outside true/false/1/0/yes/no names the variable."""
    message = load_error(environ={"ALLOW_PRODUCER_AS_WORKER": "maybe"})
    assert "'allowProducerAsWorker' (env ALLOW_PRODUCER_AS_WORKER)" in message


def test_bad_enum_lists_allowed_values() -> None:
    """A value outside an enum names the key and the allowed words."""
    message = load_error(environ={"BACKOFF_POLICY": "random"})
    assert "'backoffPolicy' (env BACKOFF_POLICY)" in message
    assert "exp_full_jitter" in message


def test_bad_flag_value_names_the_flag() -> None:
    """A bad flag value names the key and the flag."""
    message = load_error(flags={"log_level": "loud"})
    assert "config key 'logLevel' (flag --log-level)" in message


def test_bad_redis_address_is_refused() -> None:
    """An address that is neither host:port nor a redis/unix URL is refused."""
    for addr in ("localhost", "http://x:1", "redis://h:notaport", "unix://relative"):
        assert "(env REDIS_ADDR)" in load_error(environ={"REDIS_ADDR": addr})


def test_duplicate_transport_is_refused() -> None:
    """The same transport listed twice is refused."""
    assert "twice" in load_error(environ={"TRANSPORTS": "http,http"})


def test_all_bad_values_are_reported_at_once() -> None:
    """Several bad values are reported together."""
    message = load_error(environ={"PORT": "x", "LOG_LEVEL": "loud"})
    assert "'port'" in message
    assert "'logLevel'" in message


def test_backoff_max_below_base_is_refused() -> None:
    """backoffMaxSeconds below backoffBaseSeconds names backoffMaxSeconds."""
    message = load_error(environ={"BACKOFF_BASE_SECONDS": "60", "BACKOFF_MAX_SECONDS": "30"})
    assert message.startswith("config key 'backoffMaxSeconds' (env BACKOFF_MAX_SECONDS)")


# ---------------------------------------------------------------- auth rules


def test_prod_without_auth_fails(tmp_path: Path) -> None:
    """env prod with no auth providers refuses to load."""
    message = load_error(environ={"ENV": "prod"})
    assert "env 'prod' requires producerAuthProvider and workerAuthProvider" in message


def test_prod_with_static_auth_loads(tmp_path: Path) -> None:
    """env prod with static providers and real tokens loads, not in dev mode."""
    config = load_config(write_yaml(tmp_path, static_config(env="prod")), environ={})
    assert config.env == "prod"
    assert not config.dev_mode


def test_prod_refuses_placeholder_tokens(tmp_path: Path) -> None:
    """env prod refuses the example files' change-me tokens."""
    path = CONFIG_DIR / "static-tokens.example.yaml"
    assert "placeholder" in load_error(path=path, environ={"ENV": "prod"})


def test_prod_refuses_producer_as_worker(tmp_path: Path) -> None:
    """allowProducerAsWorker is refused with env prod."""
    path = write_yaml(tmp_path, static_config(env="prod", allowProducerAsWorker=True))
    assert "'allowProducerAsWorker'" in load_error(path=path)


def test_static_provider_without_tokens_fails() -> None:
    """A static provider with no staticTokens refuses to load."""
    message = load_error(environ={"WORKER_AUTH_PROVIDER": "static"})
    assert "'workerAuthProvider' (env WORKER_AUTH_PROVIDER)" in message
    assert "staticTokens" in message


def test_tokens_without_provider_imply_static(tmp_path: Path) -> None:
    """staticTokens with providers left unset make both providers static."""
    path = write_yaml(tmp_path, {"staticTokens": {TOKEN: {"sub": "alice"}}})
    config = load_config(path, environ={})
    assert (config.producer_auth_provider, config.worker_auth_provider) == ("static", "static")
    assert not config.dev_mode


def test_dev_mode_refuses_public_bind_address() -> None:
    """Dev mode (no auth) refuses a non-loopback bind address."""
    message = load_error(environ={"BIND_ADDRESS": "0.0.0.0"})
    assert "'bindAddress' (env BIND_ADDRESS)" in message


def test_auth_allows_public_bind_address(tmp_path: Path) -> None:
    """With auth configured, any bind address is allowed."""
    path = write_yaml(tmp_path, static_config(bindAddress="0.0.0.0"))
    assert load_config(path, environ={}).bind_address == "0.0.0.0"


def test_short_static_token_is_refused_in_prod(tmp_path: Path) -> None:
    """A static token shorter than 16 characters is refused with env prod, without
    echoing it."""
    doc = static_config(staticTokens={"short-tok": {"sub": "alice"}}, env="prod")
    message = load_error(path=write_yaml(tmp_path, doc))
    assert "'staticTokens'" in message
    assert "16 characters" in message
    assert "short-tok" not in message


def test_short_static_token_is_a_warning_in_dev(tmp_path: Path) -> None:
    """In dev, a short static token like codeQ's `dev-token` loads, with a note (the
    daemon logs it) that names its sub, not the token."""
    doc = static_config(staticTokens={"dev-token": {"sub": "alice"}})
    config = load_config(write_yaml(tmp_path, doc), environ={})
    assert [t.token for t in config.static_tokens] == ["dev-token"]
    assert len(config.notes) == 1
    assert "'alice'" in config.notes[0] and "dev-token" not in config.notes[0]


def test_static_token_claims_need_sub(tmp_path: Path) -> None:
    """Static token claims without a non-empty sub are refused without echoing the token."""
    path = write_yaml(tmp_path, static_config(staticTokens={TOKEN: {"tenantId": "acme"}}))
    message = load_error(path=path)
    assert "'sub'" in message
    assert TOKEN not in message


# ---------------------------------------------------------------- jwks auth


def test_jwks_settings_are_read_from_codeq_env_names() -> None:
    """The JWKS settings come from codeQ's environment variable names."""
    environ = {
        "PRODUCER_AUTH_PROVIDER": "jwks",
        "WORKER_AUTH_PROVIDER": "jwks",
        "IDENTITY_JWKS_URL": "https://id.example/.well-known/jwks.json",
        "IDENTITY_ISSUER": "https://id.example",
        "IDENTITY_AUDIENCE": "codeq-api",
        "WORKER_JWKS_URL": "file:///etc/codeq/jwks.json",
        "WORKER_ISSUER": "https://workers.example",
        "WORKER_AUDIENCE": "my-workers",
        "ALLOWED_CLOCK_SKEW_SECONDS": "5",
        "JWKS_REFETCH_INTERVAL_SECONDS": "0.5",
    }
    config = load_config(environ=environ)
    assert (config.producer_auth_provider, config.worker_auth_provider) == ("jwks", "jwks")
    assert config.identity_jwks_url == "https://id.example/.well-known/jwks.json"
    assert (config.identity_issuer, config.identity_audience) == ("https://id.example", "codeq-api")
    assert config.worker_jwks_url == "file:///etc/codeq/jwks.json"
    assert config.worker_issuer == "https://workers.example"
    assert config.worker_audience == "my-workers"
    assert (config.allowed_clock_skew_seconds, config.jwks_refetch_interval_seconds) == (5, 0.5)


def test_jwks_provider_without_its_url_fails() -> None:
    """A jwks provider without its JWKS URL names the provider key and the missing URL."""
    message = load_error(environ={"WORKER_AUTH_PROVIDER": "jwks"})
    assert message.startswith("config key 'workerAuthProvider' (env WORKER_AUTH_PROVIDER)")
    assert "workerJwksUrl (env WORKER_JWKS_URL)" in message


def test_jwks_url_implies_the_jwks_provider() -> None:
    """A JWKS URL with its provider left unset makes that provider jwks."""
    config = load_config(environ={"IDENTITY_JWKS_URL": "https://id.example/jwks.json"})
    assert (config.producer_auth_provider, config.worker_auth_provider) == ("jwks", None)
    assert not config.dev_mode


def test_bad_jwks_url_is_refused() -> None:
    """A JWKS URL that is not https://, http:// or an absolute file:// path is refused."""
    for url in ("ftp://id.example/jwks", "id.example/jwks.json", "file://relative/jwks.json"):
        message = load_error(environ={"IDENTITY_JWKS_URL": url})
        assert "'identityJwksUrl' (env IDENTITY_JWKS_URL)" in message


# ---------------------------------------------------------------- secrets


def test_masked_hides_secrets(tmp_path: Path) -> None:
    """masked() shows YAML keys and replaces the password and token strings by ***."""
    path = write_yaml(tmp_path, static_config(redisPassword=SECRET))
    masked = load_config(path, environ={"REDIS_ADDR": f"redis://app:{SECRET}@db:6379"}).masked()
    assert masked["redisPassword"] == "***"
    assert masked["redisAddr"] == "redis://app:***@db:6379"
    assert masked["staticTokens"] == [
        {"token": "***", "claims": {"sub": "alice", "tenantId": "acme"}}
    ]
    assert SECRET not in repr(masked)
    assert TOKEN not in repr(masked)


def test_repr_hides_secrets(tmp_path: Path) -> None:
    """repr(Config) does not show the password or token strings."""
    path = write_yaml(tmp_path, static_config(redisPassword=SECRET))
    text = repr(load_config(path, environ={}))
    assert SECRET not in text
    assert TOKEN not in text


def test_bad_secret_is_not_echoed(tmp_path: Path) -> None:
    """An error about a secret value never shows the value."""
    message = load_error(path=write_yaml(tmp_path, {"redisPassword": 987654321}))
    assert "'redisPassword'" in message
    assert "987654321" not in message


def test_bad_redis_url_hides_password() -> None:
    """An error about a redis URL shows it with the password masked."""
    message = load_error(environ={"REDIS_ADDR": f"redis://app:{SECRET}@db:notaport"})
    assert SECRET not in message
    assert "redis://app:***@db:notaport" in message


# ---------------------------------------------------------------- state directory


def test_state_directory_prefers_state_dir() -> None:
    """An explicit stateDir wins over every variable."""
    config = Config(state_dir="/srv/codeq")
    environ = {"STATE_DIRECTORY": "/var/lib/codeq", "XDG_STATE_HOME": "/x", "HOME": "/h"}
    assert config.state_directory(environ) == Path("/srv/codeq")


def test_state_directory_uses_systemd_first_path() -> None:
    """$STATE_DIRECTORY is used next, its first path when it holds several."""
    environ = {"STATE_DIRECTORY": "/var/lib/codeq:/var/lib/other", "XDG_STATE_HOME": "/x"}
    assert Config().state_directory(environ) == Path("/var/lib/codeq")


def test_state_directory_uses_xdg_state_home() -> None:
    """$XDG_STATE_HOME/codeq comes after $STATE_DIRECTORY."""
    assert Config().state_directory({"XDG_STATE_HOME": "/xdg", "HOME": "/h"}) == Path("/xdg/codeq")


def test_state_directory_falls_back_to_home() -> None:
    """Without any variable the directory is ~/.local/state/codeq."""
    assert Config().state_directory({"HOME": "/h"}) == Path("/h/.local/state/codeq")


# ---------------------------------------------------------------- shipped files


def test_shipped_default_config_equals_defaults() -> None:
    """config/codeq.yaml loads and equals Config()."""
    assert load_config(CONFIG_DIR / "codeq.yaml", environ={}) == Config()


def test_shipped_default_config_lists_every_key() -> None:
    """config/codeq.yaml documents every setting."""
    document = yaml.safe_load((CONFIG_DIR / "codeq.yaml").read_text(encoding="utf-8"))
    assert set(document) == set(Config().masked())


def test_example_static_tokens_file_loads() -> None:
    """config/static-tokens.example.yaml loads with three tokens, one of them admin."""
    config = load_config(CONFIG_DIR / "static-tokens.example.yaml", environ={})
    assert (config.producer_auth_provider, config.worker_auth_provider) == ("static", "static")
    assert len(config.static_tokens) == 3
    assert any(token.claims.get("role") == "ADMIN" for token in config.static_tokens)


def test_config_dir_is_not_a_package() -> None:
    """config/ holds data only, so it never shadows codeq.config."""
    assert not (CONFIG_DIR / "__init__.py").exists()


# ---------------------------------------------------------------- codeQ's forms

CODEQ_PRODUCER = (
    '{"token":"dev-token","subject":"producer-dev","raw":{"role":"ADMIN","tenantId":"dev-tenant"}}'
)
CODEQ_WORKER = (
    '{"token":"dev-token","subject":"worker-dev","scopes":["codeq:claim","codeq:result"],'
    '"eventTypes":["*"],"raw":{"tenantId":"dev-tenant"}}'
)


def test_codeq_static_auth_configs_from_the_environment() -> None:
    """codeQ's PRODUCER_AUTH_CONFIG / WORKER_AUTH_CONFIG (static, as its local compose
    sets them) become static tokens; one token in both is producer and worker."""
    config = load_config(
        None,
        environ={
            "PRODUCER_AUTH_PROVIDER": "static",
            "PRODUCER_AUTH_CONFIG": CODEQ_PRODUCER,
            "WORKER_AUTH_PROVIDER": "static",
            "WORKER_AUTH_CONFIG": CODEQ_WORKER,
        },
    )
    assert (config.producer_auth_provider, config.worker_auth_provider) == ("static", "static")
    [token] = config.static_tokens
    assert token.token == "dev-token"
    assert token.claims == {
        "role": "ADMIN",
        "tenantId": "dev-tenant",
        "sub": "worker-dev",
        "aud": ["codeq-worker"],
        "scope": "codeq:claim codeq:result",
        "eventTypes": ["*"],
    }
    assert config.masked()["producerAuthConfig"] == "***"


def test_codeq_jwks_auth_config_sets_the_jwks_keys(tmp_path: Path) -> None:
    """A codeQ jwks provider config (YAML object) sets the role's JWKS URL, issuer,
    audience and clock skew; codeq's own keys win where both are given."""
    doc = {
        "workerAuthConfig": {
            "jwksUrl": "https://idp.example.com/jwks.json",
            "issuer": "https://idp.example.com",
            "audience": "codeq-worker",
            "clockSkew": "1m30s",
            "httpTimeout": "5s",
        },
        "producerAuthConfig": {"jwksUrl": "https://idp.example.com/p.json", "issuer": "x"},
        "identityIssuer": "https://own.example.com",
    }
    config = load_config(write_yaml(tmp_path, doc), environ={})
    assert config.worker_auth_provider == "jwks" and config.producer_auth_provider == "jwks"
    assert config.worker_jwks_url == "https://idp.example.com/jwks.json"
    assert config.worker_issuer == "https://idp.example.com"
    assert config.allowed_clock_skew_seconds == 90
    assert config.identity_jwks_url == "https://idp.example.com/p.json"
    assert config.identity_issuer == "https://own.example.com"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("not json", "must be a JSON object"),
        ('{"token":"t","subject":"s","scope":"x"}', "unknown key 'scope'"),
        ('{"subject":"s"}', "'token' must be a non-empty string"),
        ('{"jwksUrl":"ftp://x/j","issuer":"i"}', "jwksUrl"),
        ('{"jwksUrl":"https://x/j","clockSkew":"soon"}', "'clockSkew' must be a duration"),
    ],
)
def test_bad_codeq_auth_config_is_refused(raw: str, named: str) -> None:
    """A codeQ provider config codeq cannot read stops the start, naming the key and
    the problem, never echoing the value."""
    message = load_error(environ={"PRODUCER_AUTH_CONFIG": raw})
    assert "PRODUCER_AUTH_CONFIG" in message and "producerAuthConfig" in message
    assert named in message or "url" in message.lower(), message
    assert raw not in message


def test_codeq_config_file_loads_with_one_warning(tmp_path: Path) -> None:
    """codeQ's own config file (its Helm chart's keys) loads: the keys codeq applies
    are applied, the ones it does not are named in one note; a key nobody knows still
    stops the start."""
    doc = {
        "port": 8081,
        "redisAddr": "localhost:6666",
        "identityServiceUrl": "http://api.example.com",
        "identityServiceApiKey": "",
        "logLevel": "info",
        "logFormat": "json",
        "env": "dev",
        "timezone": "America/Sao_Paulo",
        "defaultLeaseSeconds": 300,
        "requeueInspectLimit": 200,
        "localArtifactsDir": "/var/lib/codeq/artifacts",
        "maxAttemptsDefault": 5,
        "backoffPolicy": "exp_full_jitter",
        "backoffBaseSeconds": 5,
        "backoffMaxSeconds": 900,
        "workerAudience": "codeq-worker",
        "allowedClockSkewSeconds": 60,
        "subscriptionMinIntervalSeconds": 5,
        "subscriptionCleanupIntervalSeconds": 60,
        "resultWebhookMaxAttempts": 5,
        "resultWebhookBaseBackoffSeconds": 2,
        "resultWebhookMaxBackoffSeconds": 60,
        "persistenceProvider": "redis",
        "tracingEnabled": False,
    }
    config = load_config(write_yaml(tmp_path, doc), environ={})
    assert (config.port, config.redis_addr) == (8081, "localhost:6666")
    [note] = config.notes
    for key in ("identityServiceUrl", "timezone", "requeueInspectLimit", "persistenceProvider"):
        assert key in note
    message = load_error(path=write_yaml(tmp_path, {**doc, "nobodysKey": 1}, name="bad.yaml"))
    assert "unknown config key 'nobodysKey'" in message
