"""semcon inspect: every message a member sent and received, with the ledger's bytes."""

from conftest import cli, one_line_error, rows

from semcon.studies.inspection import exchanges


def test_inspect_shows_every_byte_a_member_sent_and_received(kept_run):
    found = exchanges(kept_run, client="geo")
    ledger = [r for r in rows(kept_run / "ledger.jsonl") if r["client"] == "geo"]
    assert sum(r["encoded_bytes"] for ex in found for r in ex.sent + ex.received) == sum(r["encoded_bytes"] for r in ledger)
    assert [ex.round for ex in found] == [0, 1] and [r["kind"] for r in found[0].received] == ["config", "public"]
    uploads = [r for r in rows(kept_run / "uploads/round_01.jsonl") if r["client"] == "geo"]
    assert found[1].answers == uploads and found[1].labels == rows(kept_run / "pseudo_labels/round_01.jsonl")
    assert "train_loss" in found[0].report and any(k.startswith("evaluation") for k in found[1].report)

    result = cli("inspect", kept_run, "--client", "geo", "--round", "1")
    assert result.exit_code == 0, result.output
    assert "round 1 · geo" in result.output and "round 0" not in result.output
    upload = next(r for r in found[1].sent if r["kind"] == "upload")
    assert f"{upload['encoded_bytes']:,} B on the wire ({upload['raw_bytes']:,} B of text" in result.output
    assert all(a["text"].splitlines()[0] in result.output for a in uploads if a["text"].strip())
    assert "competence knn" in result.output and "competence gain" in result.output
    public = {r["id"]: r["instruction"] for r in rows(kept_run / "public.jsonl")}
    first = uploads[0]["prompt_id"]
    assert f"{first} {' '.join(public[first].split())[:60]}" in result.output.replace("'", "").replace('"', "")


def test_inspect_names_what_it_cannot_find(kept_run, tmp_path):
    one_line_error(cli("inspect", kept_run, "--client", "bob"), "no client 'bob'")
    one_line_error(cli("inspect", kept_run, "--round", "7"), "no round 7")
    one_line_error(cli("inspect", tmp_path), "not a run directory")
