"""The embedded Tango database and declarative registration (``tpx3 tango db/setup/stop``).

Everything runs against PyTango's real sqlite database server in a separate process on a
free loopback port; expectations are read back through the plain tango.Database client.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import tango
import yaml

from tango_tpx3.database import (
    EXAMPLE_CONFIG, load_registration, parse_registration, read_pid_file, register,
    register_from_yaml, start_database,
)
from tpx3lib.errors import ConfigError

TPX3 = [sys.executable, "-m", "tpx3lib.cli"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    handle = start_database(tmp_path_factory.mktemp("tangodb"), port=0)
    try:
        yield handle
    finally:
        handle.stop()


def client(handle) -> tango.Database:
    return tango.Database(handle.host, handle.port)


def example() -> dict:
    return yaml.safe_load(EXAMPLE_CONFIG.read_text())


def test_database_answers_on_loopback(db):
    assert db.host == "127.0.0.1" and db.port > 0
    info = client(db).get_info()
    assert "Running since" in info
    assert db.db_file.exists()


def test_example_registration_is_in_the_database_and_idempotent(db):
    changes = register_from_yaml(EXAMPLE_CONFIG, db.tango_host)
    assert changes, "a first registration must report what it added"
    c = client(db)
    flat = list(c.get_device_class_list("Tpx3Server/sim").value_string)
    pairs = dict(zip(flat[0::2], flat[1::2]))
    assert pairs["sim/tpx3/board"] == "SpidrBoard"
    assert pairs["sim/tpx3/chip0"] == "Timepix3Chip"
    assert pairs["sim/tpx3/pipeline"] == "Tpx3Pipeline"
    assert list(c.get_device_property("sim/tpx3/board", "SpidrAddress")["SpidrAddress"]) == ["127.0.0.1:50000"]
    chip = c.get_device_property("sim/tpx3/chip0", ["Board", "ChipIndex"])
    assert list(chip["Board"]) == ["sim/tpx3/board"] and list(chip["ChipIndex"]) == ["0"]
    assert list(c.get_device_property("sim/tpx3/pipeline", "Chips")["Chips"]) == ["sim/tpx3/chip0"]
    assert c.get_device_from_alias("tpx3") == "sim/tpx3/pipeline"
    # Running it again changes nothing.
    assert register_from_yaml(EXAMPLE_CONFIG, db.tango_host) == []


def test_changed_file_updates_only_what_changed(db, tmp_path):
    register_from_yaml(EXAMPLE_CONFIG, db.tango_host)
    doc = example()
    doc["devices"][0]["properties"]["SpidrAddress"] = "127.0.0.1:50123"
    doc["server"] = "Tpx3Server/other"
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(doc))
    c = client(db)
    c.put_device_property("sim/tpx3/board", {"Untouched": ["kept"]})
    changes = register_from_yaml(path, db.tango_host)
    assert any("moved sim/tpx3/board" in line for line in changes)
    assert any("SpidrAddress = 127.0.0.1:50123" in line for line in changes)
    assert c.get_device_info("sim/tpx3/board").ds_full_name == "Tpx3Server/other"
    assert list(c.get_device_property("sim/tpx3/board", "Untouched")["Untouched"]) == ["kept"]
    # Back to the example for the other tests.
    register_from_yaml(EXAMPLE_CONFIG, db.tango_host)
    assert c.get_device_info("sim/tpx3/board").ds_full_name == "Tpx3Server/sim"


def test_alias_owned_by_another_device_is_refused(db, tmp_path):
    register_from_yaml(EXAMPLE_CONFIG, db.tango_host)
    doc = {"server": "Tpx3Server/x", "devices": [
        {"name": "x/tpx3/board", "class": "SpidrBoard", "alias": "tpx3",
         "properties": {"SpidrAddress": "10.0.0.2:50000"}}]}
    with pytest.raises(ConfigError, match="alias 'tpx3' already belongs to sim/tpx3/pipeline"):
        register(parse_registration(doc), db.tango_host)


def test_multi_server_layout():
    doc = {"servers": [
        {"server": "Tpx3Server/a", "devices": [
            {"name": "a/tpx3/board", "class": "SpidrBoard", "properties": {"SpidrAddress": "10.0.0.1:50000"}}]},
        {"server": "Tpx3Server/b", "devices": [
            {"name": "b/tpx3/board", "class": "SpidrBoard", "properties": {"SpidrAddress": "10.0.0.2"}}]},
    ]}
    servers = parse_registration(doc)
    assert [s.server for s in servers] == ["Tpx3Server/a", "Tpx3Server/b"]
    assert servers[1].devices[0].properties == {"SpidrAddress": ["10.0.0.2"]}


def _bad(mutate) -> str:
    doc = example()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_registration(doc, "cfg.yaml")
    return str(info.value)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(server="Tpx3Server"), "server: expected 'Executable/instance'"),
    (lambda d: d["devices"][0].update(name="sim/board"), "devices[0].name: expected 'domain/family/member'"),
    (lambda d: d["devices"][0].update({"class": "SpidrBord"}), "'SpidrBord' is not a class of Tpx3Server"),
    (lambda d: d["devices"][0]["properties"].update(SpidrAdress="x:1"), "SpidrBoard has no property 'SpidrAdress'"),
    (lambda d: d["devices"][0]["properties"].update(SpidrAddress="localhost:port"),
     "properties.SpidrAddress: a SPIDR address must look like host:port"),
    (lambda d: d["devices"][0]["properties"].pop("SpidrAddress"), "SpidrBoard needs SpidrAddress"),
    (lambda d: d["devices"][1]["properties"].update(ChipIndex="first"),
     "properties.ChipIndex: expected an integer, got 'first'"),
    (lambda d: d["devices"][1]["properties"].update(ChipIndex=[0, 1]), "ChipIndex: expected one value, got 2"),
    (lambda d: d["devices"][1]["properties"].update(Board="sim/tpx3/chip0"),
     "sim/tpx3/chip0.Board names sim/tpx3/chip0, a Timepix3Chip, not a SpidrBoard"),
    (lambda d: d["devices"].append(dict(d["devices"][0])), "sim/tpx3/board is listed twice"),
    (lambda d: d["devices"][0].update(propertys={}), "unknown keys ['propertys']"),
    (lambda d: d.update(devices=[]), "devices: expected a non-empty list"),
    (lambda d: d["devices"][0]["properties"].update(SpidrAddress={"host": "x"}),
     "expected a scalar or a list of scalars"),
])
def test_invalid_registration_names_the_place(mutate, expected):
    message = _bad(mutate)
    assert message.startswith("cfg.yaml: ")
    assert expected in message


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read registration file"):
        load_registration(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registration(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_registration(scalar)


def test_port_in_use_gives_a_clear_error(db, tmp_path):
    with pytest.raises(ConfigError, match="Tango database server exited"):
        start_database(tmp_path, port=db.port, timeout=20)


def test_registration_survives_a_database_restart(tmp_path):
    with start_database(tmp_path, port=0) as first:
        register_from_yaml(EXAMPLE_CONFIG, first.tango_host)
    assert not first.is_running()
    with start_database(tmp_path, port=0) as second:
        assert second.port != 0
        assert client(second).get_device_info("sim/tpx3/chip0").class_name == "Timepix3Chip"
        assert register_from_yaml(EXAMPLE_CONFIG, second.tango_host) == []


def run_cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("TANGO_HOST", None)
    proc = subprocess.run(TPX3 + list(args), env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_cli_background_database_setup_status_stop(tmp_path):
    d = str(tmp_path)
    out = run_cli("tango", "db", "--dir", d, "--port", "0", "--background").stdout
    handle = read_pid_file(tmp_path)
    try:
        assert handle is not None and handle.is_running()
        assert f"export TANGO_HOST={handle.tango_host}" in out
        # A second start from the same directory is refused and names the running one.
        again = run_cli("tango", "db", "--dir", d, "--port", "0", "--background", check=False)
        assert again.returncode == 1 and f"TANGO_HOST={handle.tango_host}" in again.stdout
        assert f"TANGO_HOST={handle.tango_host}" in run_cli("tango", "status", "--dir", d).stdout
        # setup finds the background database without TANGO_HOST.
        first = run_cli("tango", "setup", "--dir", d).stdout
        assert "added sim/tpx3/pipeline (Tpx3Pipeline) to Tpx3Server/sim" in first
        assert "no change(s)" in run_cli("tango", "setup", "--dir", d).stdout
        assert client(handle).get_device_info("sim/tpx3/board").class_name == "SpidrBoard"
        bad = tmp_path / "bad.yaml"
        bad.write_text("server: Tpx3Server/x\ndevices:\n  - {name: x/y/z, class: Nope}\n")
        failed = run_cli("tango", "setup", "--dir", d, "--config", str(bad), check=False)
        assert failed.returncode == 1
        assert "'Nope' is not a class of Tpx3Server" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert "valid" in run_cli("tango", "setup", "--check").stdout
    finally:
        stopped = run_cli("tango", "stop", "--dir", d).stdout
    assert "stopped the Tango database" in stopped
    assert not handle.is_running()
    assert read_pid_file(tmp_path) is None
    assert "no background Tango database" in run_cli("tango", "status", "--dir", d, check=False).stdout


def test_cli_setup_without_database_says_how_to_get_one(tmp_path):
    failed = run_cli("tango", "setup", "--dir", str(tmp_path), check=False)
    assert failed.returncode == 1
    assert "tpx3 tango db --background" in failed.stderr


def test_cli_foreground_database_stops_on_sigterm(tmp_path):
    env = dict(os.environ)
    env.pop("TANGO_HOST", None)
    proc = subprocess.Popen(TPX3 + ["tango", "db", "--dir", str(tmp_path), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        host = None
        for line in proc.stdout:
            if line.startswith("export TANGO_HOST="):
                host = line.strip().split("=", 1)[1]
                break
        assert host, proc.stderr.read()
        h, p = host.split(":")
        tango.Database(h, int(p)).get_info()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the database server should be a child of 'tpx3 tango db'"
        assert f"TANGO_HOST={host}" in run_cli("tango", "status", "--dir", str(tmp_path)).stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert read_pid_file(tmp_path) is None
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, "the database server outlived 'tpx3 tango db'"
    finally:
        for child in children:
            if child.is_running():
                child.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
