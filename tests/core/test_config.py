"""Configuration precedence: defaults < TOML file < environment < CLI overrides."""

import secrets
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import load_settings


def test_precedence(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text('[gateway]\nport = 1111\nhost = "0.0.0.0"\n[engine]\nmax_model_len = 128\n')
    env = {"ALIGNLOOP_GATEWAY__PORT": "2222", "ALIGNLOOP_ENGINE__MAX_NUM_SEQS": "8"}
    s = load_settings(cfg, ["gateway.port=3333"], environ=env)
    assert s.gateway.port == 3333  # CLI beats env and file
    assert s.engine.max_num_seqs == 8  # env beats default
    assert s.engine.max_model_len == 128  # file beats default
    assert s.gateway.host == "0.0.0.0"
    assert load_settings(cfg, [], environ=env).gateway.port == 2222
    assert load_settings(None, [], environ={}).gateway.port == 8000


def test_lists_from_env_and_typos_fail():
    keys = '[{"key": "k", "name": "n", "role": "rater"}]'
    s = load_settings(None, [], environ={"ALIGNLOOP_GATEWAY__API_KEYS": keys})
    assert s.gateway.api_keys[0].role == "rater"
    with pytest.raises(ValidationError):
        load_settings(None, ["gateway.prot=1"], environ={})
    with pytest.raises(ValidationError):
        load_settings(None, ['gateway.api_keys=[{"key": "k", "name": "n", "max_n": 10}]'], environ={})
    with pytest.raises(ValueError):
        load_settings(None, ["no-equals-sign"], environ={})


def test_blue_green_halves_each_engines_gpu_memory_unless_set():
    from core.config import EngineConfig

    assert EngineConfig().gpu_memory_share() == 0.85
    assert EngineConfig(swap_mode="blue_green").gpu_memory_share() == 0.42  # two engines while switching
    assert EngineConfig(swap_mode="blue_green", gpu_memory_utilization=0.3).gpu_memory_share() == 0.3


def test_limits_that_would_break_the_gateway_are_refused():
    """Hardening item 11: a zero request rate (was a ZeroDivisionError, a 500 on every request) and two
    keys with one name (which would share ownership of completions) are configuration errors."""
    with pytest.raises(ValidationError):
        load_settings(
            None, ['gateway.api_keys=[{"key": "k1", "name": "a", "requests_per_minute": 0}]'], environ={}
        )
    with pytest.raises(ValidationError, match="unique"):
        load_settings(
            None, ['gateway.api_keys=[{"key": "k1", "name": "a"}, {"key": "k2", "name": "a"}]'], environ={}
        )
    settings = load_settings(None, ['gateway.api_keys=[{"key": "sk-very-secret", "name": "a"}]'], environ={})
    assert "sk-very-secret" not in repr(settings)


def test_the_shipped_placeholder_secrets_are_refused_at_start():
    """deploy/k8s/secret.yaml and deploy/compose/alignloop.env.example ship placeholders: a
    deployment that kept them would let anyone who read this repository in."""
    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    shipped = [yaml.safe_load((deploy / "k8s" / "secret.yaml").read_text())["stringData"]]
    lines = (deploy / "compose" / "alignloop.env.example").read_text().splitlines()
    shipped.append(dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")))
    for env in shipped:
        for name, value in env.items():
            if "KEYS" in name or "SECRETS" in name:
                with pytest.raises(ValidationError, match="placeholder"):
                    load_settings(None, [], environ={name: value})
        real = {k: v.replace("CHANGE-ME", secrets.token_hex(16)) for k, v in env.items()}
        assert load_settings(None, [], environ=real).gateway.api_keys
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(None, ['feedback.sasl_password="changeme"'], environ={})
