"""The package registers as an Airflow provider, shows its config and takes over no connection type."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from importlib.metadata import entry_points

from airflow_pool_provider import settings
from airflow_pool_provider.provider_info import get_provider_info
from airflow_pool_provider.registry import PoolSettings

OPTIONS = ("min_size", "max_size", "timeout", "max_lifetime", "max_idle")


def _airflow(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__POOLED_POSTGRES__")}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env=env,
        text=True,
        timeout=120,
        capture_output=True,
    )
    assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_airflow_providers_list_shows_the_provider():
    listed = _airflow("providers", "list")
    rows = [line for line in listed.splitlines() if line.split("|")[0].strip() == "airflow-pool-provider"]
    assert len(rows) == 1, listed
    assert rows[0].split("|")[-1].strip() == get_provider_info()["versions"][0]


def test_airflow_config_list_shows_the_options_with_their_defaults():
    shown = _airflow("config", "list", "--section", "pooled_postgres", "--show-values")
    assert "[pooled_postgres]" in shown
    values = {}
    for line in shown.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
    defaults = PoolSettings()
    for option in OPTIONS:
        assert option in values, f"{option} missing from:\n{shown}"
        assert values[option] == str(getattr(defaults, option))
    assert int(values["min_size"]) == defaults.min_size
    assert int(values["max_size"]) == defaults.max_size
    assert float(values["timeout"]) == defaults.timeout
    assert float(values["max_lifetime"]) == defaults.max_lifetime
    assert float(values["max_idle"]) == defaults.max_idle


def test_the_config_section_declares_every_key_the_package_reads_with_its_default():
    options = get_provider_info()["config"]["pooled_postgres"]["options"]
    read = {f.name for f in fields(settings.Settings) if f.name != "pool"} | {f.name for f in fields(PoolSettings)}
    assert set(options) == read and len(options) == len(settings.KEYS)
    for key in settings.KEYS:  # Airflow hands a declared default back as text: it must mean the same
        assert key.parse(options[key.name]["default"]) == key.default, key.name
        assert options[key.name]["description"]


def test_provider_info_declares_no_connection_type():
    info = get_provider_info()
    assert info["package-name"] == "airflow-pool-provider"
    assert "connection-types" not in info
    assert "connection-type" not in str(info)
    registered = [
        ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_pool_provider")
    ]
    assert [ep.load() for ep in registered] == [get_provider_info]


def test_postgres_connection_type_still_belongs_to_the_postgres_provider():
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook_info = ProvidersManagerTaskRuntime().hooks["postgres"]
    assert hook_info is not None
    assert hook_info.package_name == "apache-airflow-providers-postgres"
    assert hook_info.hook_class_name == "airflow.providers.postgres.hooks.postgres.PostgresHook"


def test_airflow_providers_get_shows_the_documentation_url():
    import json

    shown = json.loads(_airflow("providers", "get", "airflow-pool-provider", "--full", "-o", "json"))
    assert shown[0]["documentation-url"].endswith("airflow-pool-provider#readme")


def test_the_ledger_retention_is_a_setting():
    shown = _airflow("config", "list", "--section", "pooled_postgres", "--show-values")
    assert "ledger_retention_days = 30" in shown
