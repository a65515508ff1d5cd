"""The policy registry: immutable numbered versions, an atomic pointer, safetensors only."""

import json
import os
import re
import shutil
import stat

import pytest

from registry.errors import RegistryError
from registry.store import PolicyRegistry


def test_publish_numbers_versions_and_keeps_metadata(tiny_model_dir, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    assert reg.names() == [] and reg.current() is None
    v1 = reg.publish(tiny_model_dir, source="tiny-model", metrics={"loss": 1.5}, make_current=True)
    v2 = reg.publish(tiny_model_dir, source="trainer", parent=v1)
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.names() == ["v0001", "v0002"]
    assert reg.current() == "v0001"
    info = reg.info(v2)
    assert info.parent == "v0001" and info.source == "trainer" and info.created > 0
    assert reg.info(v1).metrics == {"loss": 1.5}
    reg.set_current(v2)
    assert reg.current() == "v0002"
    assert (reg.root / "CURRENT").read_text() == "v0002\n"


def test_versions_are_read_only(tiny_model_dir, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    path = reg.path(reg.publish(tiny_model_dir, source="t"))
    for f in path.iterdir():
        assert not f.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), f


def test_weights_changed_after_publishing_are_refused_by_checksum(tiny_model_dir, tmp_path):
    """A still well-formed file whose bytes differ from those published (stale weights on a shared
    volume, tampering) passes every format check; only the recorded SHA-256 catches it."""
    reg = PolicyRegistry(tmp_path / "reg")
    v1 = reg.publish(tiny_model_dir, source="t")
    sums = reg.info(v1).checksums
    assert (
        set(sums) == {f.name for f in tiny_model_dir.iterdir() if f.is_file()}
        and "alignloop-version.json" not in sums
    )
    reg.verify(v1)
    weights = reg.path(v1) / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last tensor: the header and the length still agree
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=re.escape("model.safetensors changed")):
        reg.verify(v1)
    (reg.path(v1) / "extra.json").write_text("{}")
    with pytest.raises(RegistryError, match=re.escape("extra.json was added")):
        reg.verify(v1)


def test_pickle_checkpoints_are_refused(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    reg = PolicyRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="pickle"):
        reg.publish(bad, source="t")
    (bad / "pytorch_model.bin").unlink()
    with pytest.raises(RegistryError, match="safetensors"):
        reg.publish(bad, source="t")
    assert reg.names() == []
    assert not list(reg.versions_dir.iterdir()), "a refused publish left files behind"


def test_missing_config_and_unknown_versions(tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match=re.escape("config.json")):
        reg.publish(empty, source="t")
    for name in ("v0007", "../x", "latest"):
        with pytest.raises(RegistryError, match="unknown"):
            reg.path(name)
    with pytest.raises(RegistryError):
        reg.set_current("v0001")


def test_half_written_versions_are_invisible(tiny_model_dir, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    (reg.versions_dir / ".staging-crashed").mkdir()
    os.makedirs(reg.versions_dir / "v0001-partial")
    assert reg.names() == []
    assert reg.publish(tiny_model_dir, source="t") == "v0001"


def test_corrupt_weights_are_refused(tiny_model_dir, tmp_path):
    import shutil

    reg = PolicyRegistry(tmp_path / "reg")
    for damage in ("truncate", "garbage"):
        bad = tmp_path / damage
        shutil.copytree(tiny_model_dir, bad)
        weights = bad / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * len(data))
        with pytest.raises(RegistryError, match="not a valid safetensors"):
            reg.publish(bad, source="t")
    assert reg.names() == []


def test_any_damage_to_a_header_is_a_refusal(tiny_model_dir, tmp_path):
    """Hardening item 2: a header that parses but is not a table, or nests deep enough to break the
    parser, is refused like any corrupt file (not an error that escapes to the caller)."""
    import shutil

    reg = PolicyRegistry(tmp_path / "reg")
    for header in (b"[]", b"1", b'{"w": {"data_offsets": [5, 1]}}', b"[" * 200_000):
        bad = tmp_path / f"bad{len(header)}"
        shutil.copytree(tiny_model_dir, bad)
        (bad / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(RegistryError, match="not a valid safetensors"):
            reg.publish(bad, source="t")


def test_version_names_are_bounded_and_current_moves_by_compare_and_set(tiny_model_dir, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    v1 = reg.publish(tiny_model_dir, source="t", make_current=True)
    v2 = reg.publish(tiny_model_dir, source="t")
    for name in ("v" + "1" * 300, "v12345678901"):
        with pytest.raises(RegistryError, match="unknown"):
            reg.path(name)
    assert reg.compare_and_set_current(v1, v2) and reg.current() == v2
    assert not reg.compare_and_set_current(v1, v1), "CURRENT moved on: a stale revert must not win"
    assert reg.current() == v2


def test_the_tokenizer_fingerprint_covers_its_config(tiny_model_dir, tmp_path):
    """Hardening item 11: two versions whose tokenizer.json agree but whose tokenizer_config.json (special
    tokens, chat template) differ do not tokenise prompts alike: they are not the same tokenizer."""
    import json
    import shutil

    from registry.fingerprint import arch_fingerprint, tokenizer_fingerprint

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_model_dir)
    assert arch_fingerprint(other) != arch_fingerprint(tiny_model_dir)


def test_a_proposed_candidate_and_its_decision(tiny_model_dir, tmp_path):
    """The trainer proposes (CANDIDATE), a gateway decides once: the first decision kept wins, and
    clearing the proposal never withdraws a newer one."""
    registry = PolicyRegistry(tmp_path)
    v1 = registry.publish(tiny_model_dir, source="test", make_current=True)
    v2 = registry.publish(tiny_model_dir, source="test")
    v3 = registry.publish(tiny_model_dir, source="test")
    assert registry.candidate() is None and registry.decision(v2) is None
    registry.propose(v2)
    assert registry.candidate() == v2 and registry.current() == v1
    registry.propose(v3)  # a newer round's candidate replaces an undecided one
    assert not registry.clear_candidate(v2) and registry.candidate() == v3
    assert registry.record_decision(v3, {"decision": "rolled_back", "evidence": {"n": 20}})
    assert not registry.record_decision(v3, {"decision": "promoted"}), "a version is decided once"
    assert registry.decision(v3)["decision"] == "rolled_back"
    assert registry.clear_candidate(v3) and registry.candidate() is None
    with pytest.raises(RegistryError, match="unknown"):
        registry.propose("v9999")


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter (peft's layout) of rank 8 on the tiny model."""
    from transformers import AutoModelForCausalLM

    from core.config import LoRAConfig
    from trainer.lora import add_adapter

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_adapter(model, LoRAConfig(enabled=True, r=8), "CAUSAL_LM").save_pretrained(out)
    return out


def test_an_adapter_version_records_its_base_and_rank_and_is_verified(tiny_model_dir, tiny_adapter, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    v1 = reg.publish(tiny_model_dir, source="t", make_current=True)
    v2 = reg.publish(tiny_adapter, source="trainer", parent=v1, base=v1)
    info = reg.info(v2)
    assert (info.base, info.lora_rank, info.is_adapter) == (v1, 8, True)
    assert not reg.info(v1).is_adapter
    assert "adapter_model.safetensors" in info.checksums
    reg.verify(v2)
    reg.propose(v2)
    reg.set_current(v2)
    assert reg.current() == v2
    weights = reg.path(v2) / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=re.escape("adapter_model.safetensors changed")):
        reg.verify(v2)


def test_adapters_are_published_only_on_a_full_weight_base(tiny_model_dir, tiny_adapter, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    v1 = reg.publish(tiny_model_dir, source="t")
    with pytest.raises(RegistryError, match="publish it with the version of its base"):
        reg.publish(tiny_adapter, source="t")
    v2 = reg.publish(tiny_adapter, source="t", base=v1)
    with pytest.raises(RegistryError, match="an adapter itself"):
        reg.publish(tiny_adapter, source="t", base=v2)
    with pytest.raises(RegistryError, match="no adapter_model"):
        reg.publish(tiny_model_dir, source="t", base=v1)
    assert reg.names() == [v1, v2]


def test_an_adapter_with_pickled_weights_or_no_rank_is_refused(tiny_model_dir, tiny_adapter, tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    v1 = reg.publish(tiny_model_dir, source="t")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_adapter, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(RegistryError, match="pickle-format"):
        reg.publish(pickled, source="t", base=v1)
    rankless = tmp_path / "rankless"
    shutil.copytree(tiny_adapter, rankless)
    config = json.loads((rankless / "adapter_config.json").read_text())
    (rankless / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "r"}))
    with pytest.raises(RegistryError, match="rank"):
        reg.publish(rankless, source="t", base=v1)
    assert reg.names() == [v1]
