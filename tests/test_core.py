"""The shared core: registry, atomic writes, config hashes, CLI error handling."""

import os

import pytest
from click.testing import CliRunner

from ood_bench.cache import cache_dir, config_hash
from ood_bench.cli import main
from ood_bench.errors import UnknownNameError
from ood_bench.io import atomic_path, atomic_write
from ood_bench.registry import Registry


def test_registry_binds_defaults_and_lists_valid_names():
    registry = Registry("widget")

    @registry.register("small", size=1)
    @registry.register("large", size=10)
    def make(size, colour="red"):
        return (size, colour)

    assert registry.names() == ["large", "small"]
    assert registry.create("small") == (1, "red")
    assert registry.create("large", colour="blue") == (10, "blue")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'smal'.*'small'.*large, small"):
        registry.create("smal")


def test_registry_refuses_duplicates():
    registry = Registry("widget")
    registry.register("a")(dict)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(dict)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    with atomic_path(target, suffix=".txt") as tmp:
        assert tmp.suffix == ".txt" and tmp.parent == target.parent
        tmp.write_text("ok")
    assert target.read_text() == "ok"
    assert sorted(os.listdir(target.parent)) == ["x.txt"]


def test_config_hash_ignores_key_order(monkeypatch, tmp_path):
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path))
    assert cache_dir("models") == tmp_path / "models"


def test_cli_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "oodbench" in result.output


def test_atomic_files_get_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as handle:
            handle.write(b"x")
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("y")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
