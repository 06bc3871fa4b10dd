"""Default thread count: physical cores from sysfs topology within the affinity mask; env vars and threads=
keep their meaning."""
import pytest

import tinygpt
from tinygpt import threads


def fake_sysfs(root, siblings: dict[int, str], name="thread_siblings_list"):
    for cpu, sib in siblings.items():
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / name).write_text(sib + "\n")
    return root


def test_physical_cores_from_topology(tmp_path):
    smt = fake_sysfs(tmp_path / "a", {0: "0,4", 1: "1,5", 2: "2,6", 3: "3,7", 4: "0,4", 5: "1,5", 6: "2,6",
                                      7: "3,7"})
    assert threads.physical_cores(set(range(8)), smt) == 4
    assert threads.physical_cores({0, 4}, smt) == 1  # two hardware threads of one core
    assert threads.physical_cores({0, 1, 4}, smt) == 2
    flat = fake_sysfs(tmp_path / "b", {0: "0", 1: "1", 2: "2"}, name="core_cpus_list")
    assert threads.physical_cores({0, 1, 2}, flat) == 3
    assert threads.physical_cores({0, 1, 7}, flat) is None  # unreadable topology: no guess


def test_default_threads_env(monkeypatch):
    assert threads.default_threads({"TINYGPT_NUM_THREADS": "3"}) is None  # the native module reads it
    assert threads.default_threads({"OMP_NUM_THREADS": "2"}) is None
    for bad in ("abc", "0", "-2", "1.5"):
        with pytest.raises(tinygpt.InvalidArgumentError, match="TINYGPT_NUM_THREADS"):
            threads.default_threads({"TINYGPT_NUM_THREADS": bad})
    monkeypatch.setattr(threads, "physical_cores", lambda: 3)
    assert threads.default_threads({}) == 3
    monkeypatch.setattr(threads, "physical_cores", lambda: None)
    assert threads.default_threads({}) == len(threads.usable_cpus())
    assert threads.physical_cores is not None and len(threads.usable_cpus()) >= 1


class FakeCpu:
    def __init__(self):
        self.calls = []

    def set_num_threads(self, n):
        self.calls.append(n)


def test_apply_last_explicit_wins(monkeypatch):
    monkeypatch.setattr(threads, "_explicit", False)
    monkeypatch.setattr(threads, "default_threads", lambda: 5)
    cpu = FakeCpu()
    threads.apply(cpu, None)
    threads.apply(cpu, 2)
    threads.apply(cpu, None)  # a later load without threads= keeps the explicit 2
    threads.apply(cpu, 3)
    assert cpu.calls == [5, 2, 3]


def test_load_uses_the_default(tiny_dir, monkeypatch):
    _cpu = pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    before = _cpu.get_num_threads()
    monkeypatch.setattr(threads, "_explicit", False)
    monkeypatch.delenv("TINYGPT_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(threads, "physical_cores", lambda: 1)
        tinygpt.load(tiny_dir, backend="cpu")
        assert _cpu.get_num_threads() == 1
        tinygpt.load(tiny_dir, backend="cpu", threads=2)
        assert _cpu.get_num_threads() == 2
        with pytest.raises(tinygpt.InvalidArgumentError):
            tinygpt.load(tiny_dir, backend="cpu", threads=0)
        monkeypatch.setenv("TINYGPT_NUM_THREADS", "many")
        monkeypatch.setattr(threads, "_explicit", False)
        with pytest.raises(tinygpt.InvalidArgumentError, match="TINYGPT_NUM_THREADS"):
            tinygpt.load(tiny_dir, backend="cpu")
    finally:
        _cpu.set_num_threads(before)
