import pytest

from semcon.protocol import (
    CODEC_VERSION,
    AdapterUpdate,
    Download,
    ProtocolError,
    Upload,
    adapter_limits,
    decode,
    encode,
    raw_bytes,
    text_limits,
    validate_upload,
)

IDS = {"p0000", "p0001"}
LIMITS = text_limits(len(IDS), 500)


def upload(**kw):
    base = dict(round=1, client="a", answers={"p0000": "Paris is the capital.", "p0001": "Zürich ∑ 42"},
                confidence={"p0000": -0.25})
    base.update(kw)
    base.setdefault("finished", {pid: pid != "p0001" for pid in base["answers"]})
    return Upload(**base)


def check(msg, **kw):
    args = dict(client="a", round=1, prompt_ids=IDS, max_chars=100)
    args.update(kw)
    return validate_upload(msg, **args)


def test_round_trip_and_byte_counts():
    for msg in (upload(), Download(round=3, labels={"p0000": "x" * 500, "p0001": "ü"})):
        payload = encode(msg)
        assert decode(payload, LIMITS) == msg
        assert isinstance(payload, bytes)
    up = upload()
    assert raw_bytes(up) == len("Paris is the capital.".encode()) + len("Zürich ∑ 42".encode())
    long = Download(round=1, labels={f"p{i:04d}": "the same sentence again. " * 20 for i in range(50)})
    assert len(encode(long)) < raw_bytes(long) / 5  # zstd compresses repetitive text


def test_valid_upload_has_no_problems():
    assert check(upload()) == []


@pytest.mark.parametrize("msg, kw, needle", [
    (upload(round=2), {}, "round 2 instead of 1"),
    (upload(client="b"), {}, "claims to be client 'b'"),
    (upload(answers={"p0000": "x", "p0001": "y", "p9999": "z"}), {}, "unknown prompt ids p9999"),
    (upload(answers={"p0000": "x"}), {}, "missing 1 prompt ids"),
    (upload(answers={"p0000": 7, "p0001": "y"}), {}, "answer to p0000 is int"),
    (upload(answers={"p0000": "x" * 101, "p0001": "y"}), {}, "101 characters"),
    (upload(answers={"p0000": " ", "p0001": ""}), {}, "every answer is empty"),
    (upload(answers={"p0000": "\u200b\u200d \ufeff", "p0001": "\u00ad\n"}), {}, "every answer is empty"),
    (Download(round=1, labels={}), {}, "expected an upload"),
    (upload(finished={"p0000": True}), {}, "finished flags do not match"),
    (upload(confidence={"p0000": 0.5}), {}, "confidence of p0000 is 0.5"),
    (upload(confidence={"p0000": float("nan")}), {}, "confidence of p0000 is nan"),
    (upload(confidence={"p0000": float("-inf")}), {}, "confidence of p0000 is -inf"),
    (upload(confidence={"p9999": -1.0}), {}, "confidence given for prompts it did not answer"),
])
def test_every_kind_of_invalid_upload(msg, kw, needle):
    problems = check(msg, **kw)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("payload", [b"", b"garbage", encode(upload())[:-5]])
def test_garbage_bytes_raise_protocol_error(payload):
    with pytest.raises(ProtocolError):
        decode(payload, LIMITS)


def test_wrong_shape_message_raises_protocol_error():
    import msgpack
    import zstandard

    def packed(body):
        return zstandard.ZstdCompressor().compress(msgpack.packb(body))

    body = {"v": CODEC_VERSION, "kind": "upload", "round": 1, "client": "a", "answers": {"p0000": "x"},
            "finished": {"p0000": False}, "confidence": {}, "competence": {}}
    assert decode(packed(body), LIMITS) == Upload(1, "a", {"p0000": "x"}, {"p0000": False})
    for bad, needle in [({"answers": None}, "lacks field"), ({"round": True}, "'round' has the wrong type"),
                        ({"round": 1.0}, "'round' has the wrong type"), ({"v": 1.0}, f"not a semcon v{CODEC_VERSION}"),
                        ({"v": True}, f"not a semcon v{CODEC_VERSION}"), ({"v": 1}, f"not a semcon v{CODEC_VERSION}"),
                        ({"answers": ["x"]}, "'answers' has the wrong type"),
                        ({"finished": None}, "lacks field 'finished'"),
                        ({"finished": {"p0000": 1}}, "'finished' has the wrong type"),
                        ({"confidence": {"p0000": "high"}}, "'confidence' has the wrong type"),
                        ({"client": 3}, "'client' has the wrong type"), ({"kind": "hack"}, "unknown message kind")]:
        changed = {k: v for k, v in {**body, **bad}.items() if v is not None}
        with pytest.raises(ProtocolError, match=needle):
            decode(packed(changed), LIMITS)


def test_limits_refuse_what_a_round_cannot_hold():
    widest = upload(answers={"p0000": "∑" * 500, "p0001": "y"})  # 3 UTF-8 bytes a character, at the limit
    assert decode(encode(widest), LIMITS) == widest
    many = Download(round=1, labels={f"p{i:04d}": "x" for i in range(40)})
    with pytest.raises(ProtocolError, match="exceeds max_map_len"):
        decode(encode(many), text_limits(2, 5))
    adapter = AdapterUpdate(round=1, client="a", tensors=b"\0" * 5000, num_examples=3)
    assert decode(encode(adapter), adapter_limits(5000)) == adapter
    with pytest.raises(ProtocolError):
        decode(encode(adapter), adapter_limits(4000))


@pytest.mark.parametrize(("report", "needle"), [
    ({"steps": 2, "tokens": 9, "losses": [2.0], "seconds": 0.1, "dropped_too_long": 0}, "one number per step"),
    ({"steps": 1, "tokens": 9, "losses": ["low"], "seconds": 0.1, "dropped_too_long": 0}, "one number per step"),
    ({"steps": 1, "tokens": 9, "seconds": 0.1, "dropped_too_long": 0}, "one number per step"),
    ({"steps": 1, "tokens": "9", "losses": [1.0], "seconds": 0.1, "dropped_too_long": 0}, "needs numbers for"),
    ({"steps": 1, "loss": 3}, "unknown fields loss"),
])
def test_a_train_report_carries_one_loss_per_step(report, needle):
    from semcon.protocol import check_train_report

    with pytest.raises(ProtocolError, match=needle):
        check_train_report(report)
    good = {"steps": 2, "tokens": 9, "losses": [2.0, 1.5], "seconds": 0.1, "dropped_too_long": 0}
    assert check_train_report(good) is good
