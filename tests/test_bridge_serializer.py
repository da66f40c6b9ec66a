"""The wire format of protocols 2.2 and 1.0, checked against hand-built messages."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from karabo_bridge import (EmptyTrainError, ProtocolError, SerializationError, ServerError,
                           deserialize, serialize, split_fields)

META_A = {"source": "A/DEV/1", "timestamp": 1585926035.7098422, "timestamp.sec": "1585926035",
          "timestamp.frac": "709842200000000000", "timestamp.tid": 1000000}


def unpack(frame):
    return msgpack.unpackb(bytes(frame), raw=False)


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


# ----------------------------------------------------------------------------- serialize 2.2
def test_22_frames_follow_the_spec_layout():
    img = np.arange(6, dtype=np.uint16).reshape(2, 3)
    spec = np.array([0.5, 1.5], dtype=np.float32)
    data = {
        "Z/DEV/9": {"value": 7},  # inserted first, must come last (sorted by source)
        "A/DEV/1": {"image.data": img, "param.int": 123, "param.str": "x", "spec": spec,
                    "lst": [1, 2, 3]},
    }
    frames = serialize(data, {"A/DEV/1": META_A, "Z/DEV/9": {}})
    assert len(frames) == 2 * (2 + 2)  # (msgpack pair + 2 arrays) + (msgpack pair)
    assert unpack(frames[0]) == {"source": "A/DEV/1", "content": "msgpack", "metadata": META_A}
    assert unpack(frames[1]) == {"param.int": 123, "param.str": "x", "lst": [1, 2, 3]}
    assert unpack(frames[2]) == {"source": "A/DEV/1", "content": "array", "path": "image.data",
                                 "dtype": "uint16", "shape": [2, 3]}
    assert bytes(frames[3]) == b"\x00\x00\x01\x00\x02\x00\x03\x00\x04\x00\x05\x00"
    assert unpack(frames[4]) == {"source": "A/DEV/1", "content": "array", "path": "spec",
                                 "dtype": "float32", "shape": [2]}
    assert bytes(frames[5]) == bytes.fromhex("0000003f0000c03f")  # 0.5, 1.5 little-endian
    assert unpack(frames[6]) == {"source": "Z/DEV/9", "content": "msgpack", "metadata": {}}
    assert unpack(frames[7]) == {"value": 7}


def test_22_array_payload_is_not_copied():
    img = np.arange(1000, dtype=np.float64)
    frames = serialize({"S": {"x": img}})
    payload = frames[3]
    assert isinstance(payload, memoryview)
    assert np.shares_memory(np.frombuffer(payload, dtype=np.uint8), img)


def test_22_metadata_is_always_in_the_header():
    frames = serialize({"S": {"a": 1}})
    assert unpack(frames[0]) == {"source": "S", "content": "msgpack", "metadata": {}}


@pytest.mark.parametrize("dtype,name", [
    (np.uint8, "uint8"), (np.int8, "int8"), (np.uint16, "uint16"), (np.int16, "int16"),
    (np.uint32, "uint32"), (np.int32, "int32"), (np.uint64, "uint64"), (np.int64, "int64"),
    (np.float16, "float16"), (np.float32, "float32"), (np.float64, "float64"),
    (np.bool_, "bool"), (np.complex64, "complex64"), (np.complex128, "complex128"),
])
def test_22_dtype_is_the_numpy_name(dtype, name):
    frames = serialize({"S": {"x": np.zeros(2, dtype=dtype)}})
    assert unpack(frames[2])["dtype"] == name


def test_22_big_endian_arrays_are_sent_native_little_endian():
    arr = np.array([1, 258], dtype=">u2")
    frames = serialize({"S": {"x": arr}})
    assert unpack(frames[2])["dtype"] == "uint16"
    assert bytes(frames[3]) == b"\x01\x00\x02\x01"


def test_22_non_contiguous_arrays_are_sent_in_c_order():
    arr = np.arange(6, dtype=np.int32).reshape(2, 3).T  # [[0,3],[1,4],[2,5]]
    frames = serialize({"S": {"x": arr}})
    assert unpack(frames[2])["shape"] == [3, 2]
    assert np.frombuffer(bytes(frames[3]), dtype="<i4").tolist() == [0, 3, 1, 4, 2, 5]


def test_22_numpy_scalars_become_python_scalars():
    frames = serialize({"S": {"i": np.int64(-5), "u": np.uint16(7), "f": np.float32(0.5),
                              "b": np.bool_(True), "nested": [np.int32(3), {"k": np.float64(2)}]}},
                       {"S": {"timestamp.tid": np.uint64(10)}})
    payload = msgpack.unpackb(bytes(frames[1]), raw=False)  # no ext hooks: plain types only
    assert payload == {"i": -5, "u": 7, "f": 0.5, "b": True, "nested": [3, {"k": 2.0}]}
    assert type(payload["b"]) is bool and type(payload["i"]) is int
    assert unpack(frames[0])["metadata"] == {"timestamp.tid": 10}
    assert len(frames) == 2  # scalars are not arrays


def test_22_zero_dim_and_empty_arrays():
    frames = serialize({"S": {"scalar": np.array(3.5), "empty": np.zeros((0, 4), np.int16)}})
    headers = {unpack(frames[i])["path"]: (unpack(frames[i]), bytes(frames[i + 1]))
               for i in (2, 4)}
    assert headers["scalar"][0]["shape"] == [] and headers["scalar"][1] == np.float64(3.5).tobytes()
    assert headers["empty"][0]["shape"] == [0, 4] and headers["empty"][1] == b""
    data, _ = deserialize(frames)
    assert data["S"]["scalar"].shape == () and data["S"]["scalar"] == 3.5
    assert data["S"]["empty"].shape == (0, 4) and data["S"]["empty"].dtype == np.int16


def test_metadata_defaults_to_data_metadata_as_the_reference():
    data = {"S": {"a": 1, "metadata": {"timestamp.tid": 42}}}
    frames = serialize(data)
    assert unpack(frames[0])["metadata"] == {"timestamp.tid": 42}
    # the reference keeps the 'metadata' entry in the source's data as well
    assert unpack(frames[1]) == {"a": 1, "metadata": {"timestamp.tid": 42}}


def test_dummy_timestamps_fill_only_missing_ones():
    frames = serialize({"S": {"a": 1}, "T": {"b": 2}},
                       {"S": {}, "T": {"timestamp": 12.5}}, dummy_timestamps=True)
    ms, mt = unpack(frames[0])["metadata"], unpack(frames[2])["metadata"]
    assert mt == {"timestamp": 12.5}
    assert set(ms) == {"timestamp", "timestamp.sec", "timestamp.frac"}
    assert ms["timestamp.sec"] == str(int(ms["timestamp"]))
    assert len(ms["timestamp.frac"]) == 18 and ms["timestamp.frac"].isdigit()


# ----------------------------------------------------------------------------- serialize errors
def test_empty_train_is_refused():
    with pytest.raises(EmptyTrainError, match="empty train"):
        serialize({})
    with pytest.raises(ValueError):  # it refines ValueError
        serialize({}, protocol_version="1.0")


@pytest.mark.parametrize("data,match", [
    ({"S": {"x": np.array([1, "a"], dtype=object)}}, "object arrays"),
    ({"S": {"x": np.zeros(2, dtype=[("a", "u2"), ("b", "f4")])}}, "split_fields"),
    ({"S": {1: 2}}, "must be str"),
    ({"S": {"d": {"ok": 1, 2: "bad"}}}, "must be str"),
    ({5: {"a": 1}}, "source name"),
    ({"S": {"x": object()}}, "cannot serialize"),
    ({"S": [1, 2]}, "must be a dict"),
])
@pytest.mark.parametrize("protocol", ["2.2", "1.0"])
def test_unsendable_data_raises_serialization_error(data, match, protocol):
    with pytest.raises(SerializationError, match=match):
        serialize(data, protocol_version=protocol)


def test_non_str_metadata_key_is_refused():
    with pytest.raises(SerializationError, match="must be str"):
        serialize({"S": {"a": 1}}, {"S": {3: "x"}})


def test_unknown_protocol_version():
    with pytest.raises(ValueError, match="protocol version"):
        serialize({"S": {"a": 1}}, protocol_version="2.1")


def test_split_fields():
    hits = np.array([(1, 2, 30), (4, 5, 60)], dtype=[("x", "u2"), ("y", "u2"), ("tot", "u4")])
    out = split_fields(hits, "data.hits")
    assert list(out) == ["data.hits.x", "data.hits.y", "data.hits.tot"]
    assert out["data.hits.x"].tolist() == [1, 4] and out["data.hits.tot"].dtype == np.uint32
    assert all(a.flags.c_contiguous for a in out.values())
    frames = serialize({"S": out})
    assert [unpack(frames[i])["dtype"] for i in (2, 4, 6)] == ["uint16", "uint16", "uint32"]


# ----------------------------------------------------------------------------- serialize 1.0
def test_10_single_frame_msgpack_numpy_layout():
    arr = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    frames = serialize({"S": {"x": arr, "v": 1.5, "metadata": {"ignored": 1}}},
                       {"S": META_A}, protocol_version="1.0")
    assert len(frames) == 1
    msg = msgpack.unpackb(bytes(frames[0]), raw=False)
    assert msg == {"S": {
        "x": {b"nd": True, b"type": "<u2", b"kind": b"", b"shape": [2, 2],
              b"data": b"\x01\x00\x02\x00\x03\x00\x04\x00"},
        "v": 1.5,
        "metadata": META_A,
    }}


# ----------------------------------------------------------------------------- deserialize 2.2
def test_deserialize_hand_built_22_message():
    frames = [
        pack({"source": "S", "content": "msgpack", "metadata": {"timestamp.tid": 5}}),
        pack({"a": 1, "s": "x"}),
        pack({"source": "S", "content": "array", "path": "img", "dtype": "int16",
              "shape": [2, 2]}),
        np.array([1, -2, 3, -4], dtype="<i2").tobytes(),
        pack({"source": "T", "content": "msgpack"}),  # no metadata: tolerated
        pack({}),
    ]
    data, meta = deserialize(frames)
    assert meta == {"S": {"timestamp.tid": 5}, "T": {}}
    assert set(data) == {"S", "T"} and data["T"] == {}
    assert data["S"]["a"] == 1 and data["S"]["s"] == "x"
    img = data["S"]["img"]
    assert img.dtype == np.int16 and img.tolist() == [[1, -2], [3, -4]]
    assert not img.flags.writeable  # a view of the received frame


def test_deserialize_zmq_frames_without_copy():
    payload = np.arange(4, dtype=np.float32)
    frames = [zmq.Frame(pack({"source": "S", "content": "msgpack", "metadata": {}})),
              zmq.Frame(pack({})),
              zmq.Frame(pack({"source": "S", "content": "array", "path": "p",
                              "dtype": "float32", "shape": [4]})),
              zmq.Frame(payload.tobytes())]
    data, _ = deserialize(frames)
    assert data["S"]["p"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_deserialize_hand_built_10_message():
    msg = pack({"S": {
        "img": {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [2],
                b"data": np.array([1.5, 2.5], "<f4").tobytes()},
        "n": {b"nd": False, b"type": "<i8", b"data": np.int64(-3).tobytes()},
        "c": {b"complex": True, b"data": "(1+2j)"},
        "metadata": {"timestamp.tid": 9},
    }})
    data, meta = deserialize([msg])
    assert meta == {"S": {"timestamp.tid": 9}}
    assert data["S"]["img"].dtype == np.float32 and data["S"]["img"].tolist() == [1.5, 2.5]
    assert data["S"]["n"] == -3 and data["S"]["c"] == 1 + 2j
    assert data["S"]["metadata"] == {"timestamp.tid": 9}


def _pair(header, payload=b"\x80"):
    return [pack(header) if not isinstance(header, bytes) else header, payload]


GOOD_HEAD = {"source": "S", "content": "msgpack", "metadata": {}}


@pytest.mark.parametrize("frames,match", [
    ([], "no frames"),
    ([pack(GOOD_HEAD), pack({}), pack(GOOD_HEAD)], "odd number of frames"),
    (_pair(b"\xc1\xc1"), "not valid msgpack"),
    (_pair([1, 2]), "must be a msgpack map"),
    (_pair({"content": "msgpack"}), "lacks a str 'source'"),
    (_pair({"source": "S", "content": "image"}), "unknown content"),
    (_pair(GOOD_HEAD, pack([1])), "must be a msgpack map"),
    (_pair({"source": "S", "content": "msgpack", "metadata": 3}), "metadata"),
    (_pair(GOOD_HEAD) + _pair(GOOD_HEAD), "second msgpack pair"),
    (_pair({"source": "S", "content": "array", "path": "x", "dtype": "uint8", "shape": [1]},
           b"\x00"), "before its msgpack pair"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "path": "x",
                               "dtype": "uint17", "shape": [1]}, b"\x00"), "unknown dtype name"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "path": "x",
                               "dtype": "object", "shape": [1]}, b"\x00" * 8), "object"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "path": "x",
                               "dtype": 5, "shape": [1]}, b"\x00"), "dtype name"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "path": "x",
                               "dtype": "uint16", "shape": [-1]}, b"\x00"), "shape"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "path": "x",
                               "dtype": "uint16", "shape": [3]}, b"\x00" * 4), "needs 6"),
    (_pair(GOOD_HEAD) + _pair({"source": "S", "content": "array", "dtype": "uint8",
                               "shape": [1]}, b"\x00"), "'path'"),
    (_pair(GOOD_HEAD, pack({"x": 1})) + _pair({"source": "S", "content": "array", "path": "x",
                                              "dtype": "uint8", "shape": [1]}, b"\x00"),
     "given twice"),
    ([pack(5)], "must be a msgpack map"),
    ([pack({"S": 3})], "not a source map"),
    ([b"\xc1"], "not valid msgpack"),
    ([pack({"S": {"x": {b"nd": True, b"type": [["", "|O"]], b"kind": b"O", b"shape": [1],
                        b"data": b"\x80\x04N."}}})], "pickled"),
    ([pack({"S": {"x": {b"nd": True, b"type": "<u2", b"kind": b"", b"shape": [2],
                        b"data": b"\x00"}}})], "needs 4"),
])
def test_malformed_messages_raise_protocol_error(frames, match):
    with pytest.raises(ProtocolError, match=match):
        deserialize(frames)


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_server_error_string_is_recognised():
    with pytest.raises(ServerError, match="bad request"):
        deserialize([b"Error: bad request b'next 2 0'"])


# ----------------------------------------------------------------------------- round trips
_dtypes = st.sampled_from(["uint8", "int16", "uint32", "int64", "float32", "float64",
                           "bool", "complex64"])
_arrays = _dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                      min_side=0, max_side=4)))
_scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                     st.text(max_size=5), st.booleans(), st.none(),
                     st.lists(st.integers(-100, 100), max_size=3))
_keys = st.text(alphabet="abcxyz.", min_size=1, max_size=6)
_source = st.dictionaries(_keys, st.one_of(_arrays, _scalars), max_size=4)
_train = st.dictionaries(st.text(alphabet="ABC/:1", min_size=1, max_size=8), _source,
                         min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(_train, st.sampled_from(["2.2", "1.0"]))
def test_roundtrip_property(train, protocol):
    meta = {src: {"source": src, "timestamp.tid": i} for i, src in enumerate(sorted(train))}
    data, got_meta = deserialize(serialize(train, meta, protocol_version=protocol))
    assert got_meta == meta
    assert set(data) == set(train)
    for src, props in train.items():
        got = dict(data[src])
        if protocol == "1.0":
            assert got.pop("metadata") == meta[src]
        assert set(got) == set(props)
        for key, value in props.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape
                np.testing.assert_array_equal(got[key], value)
            else:
                assert got[key] == value
