import pytest

from streams.config import ConfigError, load_config, parse_config, usd_to_micros

MINIMAL = {
    "providers": {
        "p": {
            "base_url": "http://x",
            "models": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}},
        }
    },
    "tenants": {"acme": {}},
}


def test_the_shipped_config_loads_and_resolves_its_routes():
    config = load_config("sluicegate.toml")
    route = config.resolve_route("chat")
    assert route is not None and str(route.primary) == "sim/sim-large"
    assert [str(m) for m in route.fallbacks] == ["sim/sim-small", "sim-anthropic/sim-claude"]
    assert config.resolve_route("sim-small") is not None
    assert config.resolve_route("no-such-model") is None


@pytest.mark.parametrize(
    ("patch", "names"),
    [
        ({"tenants": {"acme": {"rpm": 0}}}, "tenants.acme.rpm"),
        ({"tenants": {"acme": {"max_priority": "urgent"}}}, "tenants.acme.max_priority"),
        ({"tenants": {"acme": {"colour": "red"}}}, "tenants.acme.colour"),
        ({"routes": {"r": {"primary": "p/nope"}}}, "routes.r.primary"),
        ({"routes": {"r": {"primary": "p/m", "fallbacks": ["q/m"]}}}, "routes.r.fallbacks[0]"),
        ({"kafka": {"partitions": 0}}, "kafka.partitions"),
    ],
)
def test_errors_name_the_bad_key(patch, names):
    data = {**MINIMAL, **patch}
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data)


def test_a_missing_file_and_bad_toml_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_dollars_become_exact_micro_dollars():
    assert usd_to_micros(2.5) == 2_500_000
    assert usd_to_micros(0.000001) == 1
    assert usd_to_micros(0.1) + usd_to_micros(0.2) == usd_to_micros(0.3)
