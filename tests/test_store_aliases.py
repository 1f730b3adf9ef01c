"""Model aliases (issue 23 item 3): a named, movable pointer to a stored model, as MLflow's
registered-model aliases. Both back ends: MongoStore on mongomock, the embedded store (the
compare-and-set raced by processes). Set atomically, refused for a model not in the namespace,
each move kept in the history, invisible across namespaces, guarding the model against delete,
and `alias:NAME` taken wherever a model reference is."""
from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from susy_pipeline import cli
from susy_pipeline.errors import BadInput
from susy_pipeline.store import (AliasConflict, EmbeddedStore, ModelInUse, ModelNotFound, ModelRef,
                                 MongoStore, open_store)

from support.mongo import mongomock_client, run_processes, stores  # noqa: F401 (a fixture)


def test_an_alias_is_set_moved_and_resolved_everywhere_a_reference_is(stores):
    store = stores()
    first = store.save_model({"run": "r"}, b"first")
    second = store.save_model({"run": "r"}, b"second")
    assert store.get_alias("champion") is None and store.list_aliases() == []
    set_ = store.set_alias("champion", first, set_by="alice")
    assert (set_["model_id"], set_["set_by"], set_["version"], set_["namespace"]) == (first, "alice", 1, "local")
    assert store.resolve_model("alias:champion")["model_id"] == first
    assert store.load_model(ModelRef.parse("alias:champion"))[1] == b"first"
    time.sleep(0.01)
    moved = store.set_alias("champion", second, set_by="bob", expected_model_id=first)
    assert (moved["model_id"], moved["previous_model_id"], moved["version"]) == (second, first, 2)
    assert moved["set_at"] > set_["set_at"]
    assert store.load_model("alias:champion")[1] == b"second"
    got = store.get_alias("champion")
    assert {k: got[k] for k in ("name", "model_id", "set_by", "set_at", "version")} == {
        "name": "champion", "model_id": second, "set_by": "bob", "set_at": moved["set_at"], "version": 2}
    store.set_alias("challenger", first, set_by="carol")
    assert [(a["name"], a["model_id"]) for a in store.list_aliases()] == [("challenger", first), ("champion", second)]
    with pytest.raises(ModelNotFound, match="no alias 'nobody' in namespace 'local'"):
        store.resolve_model("alias:nobody")


def test_history_keeps_every_move_newest_first(stores):
    store = stores()
    ids = [store.save_model({"run": "r"}, bytes([i])) for i in range(3)]
    for i, (model_id, who) in enumerate(zip(ids + [ids[0]], ["a", "b", "c", "d"])):
        store.set_alias("prod", model_id, set_by=who, expected_model_id=None if i == 0 else [*ids, ids[0]][i - 1])
    history = store.alias_history("prod")
    assert [(h["version"], h["model_id"], h["previous_model_id"], h["set_by"]) for h in history] == [
        (4, ids[0], ids[2], "d"), (3, ids[2], ids[1], "c"), (2, ids[1], ids[0], "b"), (1, ids[0], None, "a")]
    assert [h["set_at"] for h in history] == sorted((h["set_at"] for h in history), reverse=True)
    assert store.alias_history("other") == []


def test_a_compare_and_set_with_a_stale_expectation_is_refused_and_changes_nothing(stores):
    one, two = stores(), stores()  # two writers on one back end
    a, b, c = (one.save_model({"run": "r"}, x) for x in (b"a", b"b", b"c"))
    one.set_alias("champion", a, set_by="setup")
    seen_by_both = one.get_alias("champion")["model_id"]
    assert two.get_alias("champion")["model_id"] == seen_by_both == a
    one.set_alias("champion", b, set_by="writer-1", expected_model_id=seen_by_both)
    with pytest.raises(AliasConflict, match=f"alias 'champion' points to model {b}, not the expected {a}") as lost:
        two.set_alias("champion", c, set_by="writer-2", expected_model_id=seen_by_both)
    assert lost.value.exit_code == 2
    assert one.get_alias("champion")["model_id"] == b
    assert [h["set_by"] for h in one.alias_history("champion")] == ["writer-1", "setup"]
    with pytest.raises(AliasConflict, match="points to no model"):  # expecting an alias that does not exist
        two.set_alias("new", c, set_by="w", expected_model_id=a)
    assert two.get_alias("new") is None


def test_an_alias_to_a_model_not_in_the_namespace_is_refused(stores):
    a, b = stores("team-a"), stores("team-b")
    theirs = b.save_model({"run": "r"}, b"b")
    for model_id in (theirs, "0" * 32):
        with pytest.raises(ModelNotFound, match=f"alias 'champion': no model with id '{model_id}' in namespace 'team-a'"):
            a.set_alias("champion", model_id, set_by="alice")
    assert a.get_alias("champion") is None and a.alias_history("champion") == []
    with pytest.raises(BadInput, match="alias 'bad name'"):
        a.set_alias("bad name", theirs, set_by="alice")


def test_aliases_of_the_same_name_in_two_namespaces_are_two_aliases(stores):
    a, b = stores("team-a"), stores("team-b")
    mine, theirs = a.save_model({"run": "r"}, b"a"), b.save_model({"run": "r"}, b"b")
    b.set_alias("champion", theirs, set_by="bob")
    assert a.get_alias("champion") is None and a.list_aliases() == [] and a.alias_history("champion") == []
    with pytest.raises(ModelNotFound, match="no alias 'champion' in namespace 'team-a'"):
        a.resolve_model("alias:champion")
    a.set_alias("champion", mine, set_by="alice")
    assert a.resolve_model("alias:champion")["model_id"] == mine
    assert b.resolve_model("alias:champion")["model_id"] == theirs
    assert [h["set_by"] for h in b.alias_history("champion")] == ["bob"]


def test_deleting_an_aliased_model_is_refused_naming_the_alias_and_forced_deletes_the_alias(stores):
    store = stores()
    model_id, other = store.save_model({"run": "r"}, b"x"), store.save_model({"run": "r"}, b"y")
    store.set_alias("champion", model_id, set_by="alice")
    with pytest.raises(ModelInUse, match=r"alias\(es\) 'champion'.*--force") as refused:
        store.delete_model(model_id)
    assert refused.value.aliases == ["champion"] and store.resolve_model("alias:champion")["model_id"] == model_id
    deleted = store.delete_model(model_id, force=True, deleted_by="ops")
    assert deleted["aliases_deleted"] == ["champion"]
    assert store.get_alias("champion") is None and store.list_aliases() == []
    with pytest.raises(ModelNotFound, match="no alias 'champion'"):
        store.resolve_model("alias:champion")
    removal, first = store.alias_history("champion")
    assert (removal["model_id"], removal["previous_model_id"], removal["set_by"]) == (None, model_id, "ops")
    # Set again, it goes on counting: the history is never overwritten.
    assert store.set_alias("champion", other, set_by="alice")["version"] == 3
    assert [h["version"] for h in store.alias_history("champion")] == [3, 2, 1]


# --- two processes racing a compare-and-set on the embedded store ---------------------------

def _race(path: str, expected: str, mine: str, barrier, results) -> None:
    with EmbeddedStore(path) as store:
        barrier.wait(30)  # every writer read the same champion; now all move at once
        try:
            store.set_alias("champion", mine, set_by=f"writer-{mine[:4]}", expected_model_id=expected)
            results.put(("won", mine))
        except AliasConflict:
            results.put(("lost", mine))


def test_of_processes_racing_a_compare_and_set_on_the_embedded_store_exactly_one_wins(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    with EmbeddedStore(path) as store:
        champion = store.save_model({"run": "r"}, b"champion")
        challengers = [store.save_model({"run": "r"}, bytes([i])) for i in range(4)]
        store.set_alias("champion", champion, set_by="setup")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(challengers)), ctx.Queue()
    exits = run_processes(_race, [(path, champion, c, barrier, results) for c in challengers])
    assert exits == [0] * len(challengers)
    outcomes = [results.get(timeout=5) for _ in challengers]
    winners = [model_id for outcome, model_id in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    with EmbeddedStore(path) as store:
        assert store.get_alias("champion")["model_id"] == winners[0]
        assert [(h["model_id"], h["previous_model_id"]) for h in store.alias_history("champion")] == [
            (winners[0], champion), (champion, None)]


def test_two_first_sets_on_mongodb_make_one_alias_document():
    """Two writers' upserts of a new alias: the unique (namespace, name) index lets one insert;
    the other updates the document the first made."""
    client = mongomock_client()
    one, two = MongoStore(client=client), MongoStore(client=client)
    a, b = one.save_model({"run": "r"}, b"a"), one.save_model({"run": "r"}, b"b")
    one.set_alias("champion", a, set_by="one")
    two.set_alias("champion", b, set_by="two")
    assert client["bigdata"]["Aliases"].count_documents({"name": "champion"}) == 1
    assert [h["version"] for h in one.alias_history("champion")] == [2, 1]
    index = client["bigdata"]["Aliases"].index_information()
    assert any(spec.get("unique") and [k for k, _ in spec["key"]] == ["namespace", "name"] for spec in index.values())


def test_a_move_whose_history_entry_was_lost_still_shows_in_the_history():
    """A mover stopped between its find_one_and_update and its history write: the alias document
    is the newest entry, and the next move writes the missing one."""
    client = mongomock_client()
    store = MongoStore(client=client)
    a, b, c = (store.save_model({"run": "r"}, x) for x in (b"a", b"b", b"c"))
    store.set_alias("champion", a, set_by="one")
    store.set_alias("champion", b, set_by="two")
    client["bigdata"]["AliasHistory"].delete_one({"version": 2})
    assert [(h["version"], h["model_id"]) for h in store.alias_history("champion")] == [(2, b), (1, a)]
    store.set_alias("champion", c, set_by="three")
    assert [(h["version"], h["model_id"]) for h in store.alias_history("champion")] == [(3, c), (2, b), (1, a)]


# --- the command ------------------------------------------------------------------------------

def test_models_alias_set_get_list_history_and_delete_on_the_command_line(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store.sqlite3"
    with open_store(uri) as store:
        first = store.save_model({"run": "r"}, b"1")
        time.sleep(0.01)
        second = store.save_model({"run": "r"}, b"2")

    def models(*argv):
        code = cli.main(["models", *argv, "--store", uri])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    monkeypatch.setenv("USER", "alice")
    code, alias, _ = models("alias", "set", "champion", first)
    assert code == 0 and (alias["model_id"], alias["set_by"]) == (first, "alice")
    code, alias, _ = models("alias", "set", "champion", "latest:r", "--expect", first, "--set-by", "ci")
    assert code == 0 and (alias["model_id"], alias["set_by"], alias["previous_model_id"]) == (second, "ci", first)
    code, _, err = models("alias", "set", "champion", first, "--expect", first)
    assert code == 2 and f"points to model {second}, not the expected {first}" in err
    code, alias, _ = models("alias", "get", "champion")
    assert code == 0 and alias["model_id"] == second
    code, _, err = models("alias", "get", "nobody")
    assert code == 2 and "no alias 'nobody' in namespace 'local'" in err
    code, listing, _ = models("alias", "list")
    assert listing["count"] == 1 and listing["aliases"][0]["name"] == "champion"
    code, history, _ = models("alias", "history", "champion")
    assert [h["set_by"] for h in history["history"]] == ["ci", "alice"]
    code, alias, _ = models("alias", "set", "runner-up", "alias:champion")  # an alias of an alias's model
    assert alias["model_id"] == second
    assert models("export", "alias:champion", "--out", str(tmp_path / "c.keras"))[0] == 0
    assert (tmp_path / "c.keras").read_bytes() == b"2"
    code, lineage, _ = models("lineage", "alias:runner-up")
    assert lineage["model_id"] == second
    code, listing, _ = models("alias", "list", "--namespace", "team-b")
    assert listing == {"count": 0, "aliases": []}

    code, _, err = models("delete", second)
    assert code == 2 and "alias(es) 'champion', 'runner-up'" in err
    code, deleted, _ = models("delete", second, "--force")
    assert code == 0 and deleted["aliases_deleted"] == ["champion", "runner-up"]
    code, history, _ = models("alias", "history", "champion")
    assert history["history"][0]["model_id"] is None
    assert "alice (models delete --force)" == history["history"][0]["set_by"]
