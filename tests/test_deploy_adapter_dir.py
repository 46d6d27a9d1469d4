"""The adapter directory check: under the root, a LoRA config vLLM can serve, weights present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deploy.adapter_dir import AdapterOutsideRoot, InvalidAdapter, check_adapter_dir

BASE = "/models/tiny"


def write_adapter(directory: Path, **config: object) -> Path:
    directory.mkdir(parents=True)
    settings = {
        "peft_type": "LORA",
        "r": 8,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": BASE,
    }
    settings.update(config)
    (directory / "adapter_config.json").write_text(json.dumps(settings))
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    return directory


def check(path: Path | str, root: Path) -> object:
    return check_adapter_dir(path, root=root, max_rank=16, base_model=BASE)


def test_a_good_adapter_is_accepted_with_its_resolved_path(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "shop" / "v1", rank_pattern={"q_proj": 16})
    checked = check(adapter, tmp_path)
    assert (checked.path, checked.rank, checked.target_modules) == (str(adapter), 16, ("q_proj", "v_proj"))
    assert check("shop/v1", tmp_path).path == str(adapter)  # relative to the root


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"r": 32}, "rank 32 is above the servers' maximum 16"),
        ({"rank_pattern": {"v_proj": 64}}, "rank 64"),
        ({"r": None}, "no valid LoRA rank"),
        ({"peft_type": "IA3"}, "not LORA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
        ({"target_modules": ".*(embed_tokens|q_proj)"}, "embed_tokens"),
        ({"use_dora": True}, "DoRA"),
        ({"base_model_name_or_path": "/models/other"}, "trained on base model '/models/other'"),
    ],
)
def test_configs_vllm_cannot_serve_are_refused(tmp_path: Path, config: dict, message: str) -> None:
    with pytest.raises(InvalidAdapter, match=message):
        check(write_adapter(tmp_path / "a", **config), tmp_path)


def test_missing_or_broken_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="does not exist"):
        check(tmp_path / "nowhere", tmp_path)
    no_weights = write_adapter(tmp_path / "a")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="no weights file"):
        check(no_weights, tmp_path)
    (tmp_path / "b").mkdir()
    with pytest.raises(InvalidAdapter, match=r"adapter_config.json is missing"):
        check(tmp_path / "b", tmp_path)
    (tmp_path / "b" / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter, match="unreadable"):
        check(tmp_path / "b", tmp_path)


def test_paths_outside_the_root_are_refused_even_through_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    root.mkdir()
    outside = write_adapter(tmp_path / "elsewhere")
    os.symlink(outside, root / "link")
    for path in (outside, root / ".." / "elsewhere", "../elsewhere", root / "link", root, "/etc"):
        with pytest.raises(AdapterOutsideRoot, match="outside the adapter root"):
            check(path, root)


def test_the_base_model_check_accepts_spellings_of_the_same_directory(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    base.mkdir(parents=True)
    adapter = write_adapter(tmp_path / "adapters" / "v1", base_model_name_or_path=str(base))
    spelled = str(tmp_path / "models" / ".." / "models" / "tiny")
    assert check_adapter_dir(adapter, root=tmp_path / "adapters", max_rank=8, base_model=spelled).rank == 8
    assert check_adapter_dir(adapter, root=tmp_path / "adapters", max_rank=8, base_model=None).rank == 8
