"""`coachlm label` commands through Typer's test runner (the lead mounts `label_app`)."""

import json

from typer.testing import CliRunner

from coachlm.data import schema
from coachlm.feedback import accounts, assign, db, items, labels
from coachlm.cli.label import label_app


def test_import_users_tasks_export_stats(tmp_path):
    store = str(tmp_path / "f.db")
    src = tmp_path / "samples.jsonl"
    rows = [schema.Sample(prompt=schema.as_prompt("Say hi"), response=schema.Response(t, m, "1"))
            for t, m in (("hi", "sft"), ("go away", "base"))]
    src.write_text("".join(json.dumps(schema.to_dict(r)) + "\n" for r in rows))
    run = CliRunner().invoke
    r = run(label_app, ["import", str(src), "-p", "demo", "--store", store,
                        "--tasks", "comparison", "--n-labels", "1"])
    assert r.exit_code == 0, r.output
    assert "2 responses, 1 tasks" in r.output
    r = run(label_app, ["users", "add", "ann", "--store", store], env={"COACHLM_PASSWORD": "pw-12345678"})
    assert r.exit_code == 0, r.output
    r = run(label_app, ["users", "token", "ann", "--store", store])
    assert r.exit_code == 0 and len(r.output.strip()) >= 40
    r = run(label_app, ["tasks", "-p", "demo", "--kind", "rating", "--store", store])
    assert r.exit_code == 0 and "2 new rating tasks" in r.output

    st = db.open_store(store)
    with st.write() as s:
        lab, p = accounts.get_labeler(s, "ann"), items.get_project(s, "demo")
        while (a := assign.next_assignment(s, lab, p)) is not None:
            answer = {"choice": "tie"} if a.task.kind == "comparison" else {"score": 4}
            labels.submit_label(s, lab, a.id, f"cli-test-{a.id}", answer)
    st.close()

    out = tmp_path / "out" / "labels.jsonl"
    r = run(label_app, ["export", str(out), "-p", "demo", "--store", store, "--kinds", "comparison"])
    assert r.exit_code == 0 and "wrote 1 records" in r.output
    rec = schema.from_dict(json.loads(out.read_text()))
    assert isinstance(rec, schema.Comparison) and rec.choice == "tie" and rec.labeler == "ann"
    r = run(label_app, ["stats", "-p", "demo", "--store", store, "--json", "--rounds", "5"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["stats"]["labels"] == 3 and {x["name"] for x in stats["leaderboard"]} == {
        "sft@1", "base@1"}
    r = run(label_app, ["export", str(out), "-p", "nope", "--store", store])
    assert isinstance(r.exception, db.StoreError) and "no project named 'nope'" in str(r.exception)
