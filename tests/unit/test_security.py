import ssl

import pytest

from streams.security import faust_credentials, kafka_options
from streams.settings import SettingsError, load


def test_plaintext_default():
    opts = kafka_options(load({}, broker="h:1"))
    assert opts == {"bootstrap_servers": ["h:1"], "security_protocol": "PLAINTEXT"}
    assert faust_credentials(load({}, broker="h:1")) is None


def test_sasl_scram_over_tls_reaches_aiokafka_and_faust(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("hunter2-secret\n")
    s = load({"PREFSTREAM_BROKER": "kafka.example:9093", "PREFSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
              "PREFSTREAM_SASL_MECHANISM": "SCRAM-SHA-512", "PREFSTREAM_SASL_USERNAME": "svc",
              "PREFSTREAM_SASL_PASSWORD_FILE": str(pw)})
    opts = kafka_options(s)
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "svc" and opts["sasl_plain_password"] == "hunter2-secret"
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(s)
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == "hunter2-secret"
    # secrets never show in the settings' repr (which is what logs would print)
    assert "hunter2" not in repr(s) and "svc" in repr(s)


def test_sasl_plain_without_tls():
    s = load({}, broker="h:1", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
             sasl_password="p")
    assert "ssl_context" not in kafka_options(s)
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    assert credentials_to_aiokafka_auth(faust_credentials(s))["security_protocol"] == "SASL_PLAINTEXT"


@pytest.mark.parametrize("env,needle", [
    ({"PREFSTREAM_SECURITY_PROTOCOL": "TLS"}, "PREFSTREAM_SECURITY_PROTOCOL"),
    ({"PREFSTREAM_SECURITY_PROTOCOL": "SASL_SSL"}, "PREFSTREAM_SASL_MECHANISM"),
    ({"PREFSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "PREFSTREAM_SASL_MECHANISM": "PLAIN"}, "PREFSTREAM_SASL_PASSWORD"),
])
def test_incomplete_security_settings_name_the_fix(env, needle):
    with pytest.raises(SettingsError, match=needle):
        kafka_options(load({"PREFSTREAM_BROKER": "h:1", **env}))
