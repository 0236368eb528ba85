import pytest

from streams.settings import SettingsError, load


def test_env_and_overrides_and_types(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("partitions: 3\nnamespace: fromfile\n")
    s = load({"PREFSTREAM_NAMESPACE": "fromenv", "PREFSTREAM_ENABLE_IDEMPOTENCE": "true"}, config_file=cfg,
             max_inflight=7)
    assert (s.partitions, s.namespace, s.enable_idempotence, s.max_inflight) == (3, "fromenv", True, 7)


def test_frozen():
    s = load({})
    with pytest.raises(AttributeError):
        s.namespace = "x"


def test_bad_value_names_the_variable():
    with pytest.raises(SettingsError, match="PREFSTREAM_PARTITIONS"):
        load({"PREFSTREAM_PARTITIONS": "many"})


def test_unknown_config_key_and_missing_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("partitons: 3\n")
    with pytest.raises(SettingsError, match="partitons"):
        load({}, config_file=cfg)
    with pytest.raises(SettingsError, match="does not exist"):
        load({}, config_file=tmp_path / "missing.yaml")


def test_secret_hidden_from_repr_and_read_from_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-very-secret\n")
    s = load({"PREFSTREAM_OPENAI_API_KEY_FILE": str(key)})
    assert s.openai_api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(s)


def test_broker_list_parsing():
    s = load({"PREFSTREAM_BROKER": "kafka://a:1, b:2"})
    assert s.brokers == ["a:1", "b:2"]
    assert s.faust_broker == "kafka://a:1;kafka://b:2"
    with pytest.raises(SettingsError, match="PREFSTREAM_BROKER"):
        load({}).brokers


def test_the_consumer_group_follows_the_namespace_unless_set():
    from streams.app import consumer_group

    a, b = load({}, namespace="team-a"), load({"PREFSTREAM_NAMESPACE": "team-b"})
    assert (a.group_id, b.group_id) == ("team-a", "team-b")  # two namespaces never share a group
    assert consumer_group(a, "curate") == "team-a.curate"
    assert a.replace(namespace="team-c").group_id == "team-c"
    assert load({"PREFSTREAM_GROUP": "shared"}, namespace="team-a").group_id == "shared"
    assert load({}).group_id == "prefstream"  # the default namespace: the group it always had
