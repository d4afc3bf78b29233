"""`tierwise train` on a slice of the shared routing data: a loadable head with an honest model card."""
from __future__ import annotations

import json

import pytest

from classifier_service.config import Config
from classifier_service.heads import TierHead
from tierwise_tools.cli import main
from tierwise.data import is_held_out, load, shared_files, split

pytestmark = pytest.mark.data

# How far int8 numerics can move a quality figure: another x86-64 CPU's int8 kernels round differently. Measured
# by re-embedding every query in one run with a batch mate (per-run int8 scaling, decision 0009; cosine distance
# median 0.006, the size of a CPU's difference): held-out quality per file moved by up to 0.008. A bar closer to
# a measured figure than this asserts one CPU's rounding, not the product.
INT8_SLACK = 0.02


def test_held_out_split_is_stable_and_disjoint():
    records = load(shared_files())
    dev, test = split(records)
    assert {r.id for r in dev}.isdisjoint({r.id for r in test})
    assert 0.15 < len(test) / len(records) < 0.25
    assert all(is_held_out(r.id) for r in test)


def data_slice(tmp_path, per_file: int = 150):
    """The first records of each shared file, written to one file."""
    subset = tmp_path / "subset.jsonl"
    with subset.open("w") as out:
        for path in shared_files():
            with open(path) as f:
                for _, line in zip(range(per_file), f):
                    out.write(line)
    return subset


def test_train_writes_a_servable_head_with_a_model_card(tmp_path, capsys):
    subset = data_slice(tmp_path)
    assert main(["train", "--data", str(subset), "--out", str(tmp_path / "heads"), "--name", "slice"]) == 0
    head = TierHead.load(tmp_path / "heads" / "slice" / "head.json")
    assert head.name == "slice" and head.dimension == 384 and head.target_quality == 0.95
    assert head.models == () and head.relative_cost[2] == 1.0, "a pool of lineups has no single lineup"
    assert len(head.trained_on) == 3 and all(len(lineup) == 3 for lineup in head.trained_on), \
        "it names every lineup it saw, so no head of those lineups is built on it"
    for key in ("data", "lineup", "trained", "encoder", "model", "cv_accuracy", "held_out_accuracy",
                "held_out_quality_vs_frontier", "held_out_savings_at_0.95_curve"):
        assert key in head.card, key
    assert 0 <= float(head.card["held_out_accuracy"]) <= 1
    assert int(head.card["n_held_out"]) + int(head.card["n_dev"]) == 450
    assert (tmp_path / "heads" / "slice" / "MODEL_CARD.md").read_text().startswith("# Tier head `slice`")
    assert json.loads((tmp_path / "heads" / "slice" / "head.json").read_text())["format"] == "tierwise.head/v2"
    out = capsys.readouterr()
    assert "held_out_accuracy" in out.out and "several tier lineups" in out.err


def test_calibrate_stores_a_versioned_tradeoff_with_the_head(tmp_path, capsys):
    import shutil

    heads = tmp_path / "heads"
    shutil.copytree(Config().heads_dir / "default", heads / "default")
    before = TierHead.load(heads / "default" / "head.json")
    subset = data_slice(tmp_path)
    # Its development part is what the default head was fitted on: calibrating on it would grade its own work.
    assert main(["calibrate", "--data", str(subset), "--target-quality", "0.92", "--heads-dir", str(heads)]) == 2
    assert "0 different queries" in (err := capsys.readouterr().err) and "are records it was fitted on" in err
    assert "0.92" not in before.calibration
    calibrate = ["calibrate", "--data", str(subset), "--target-quality", "0.92", "--heads-dir", str(heads),
                 "--include-held-out"]
    assert main(calibrate) == 0
    after = TierHead.load(heads / "default" / "head.json")
    assert after.version != before.version and "0.92" in after.calibration
    assert after.tradeoff == before.tradeoff, "the default target's tradeoff is untouched"
    assert "calibration_0.92" in after.card and "records" in after.card["calibration_0.92"]
    assert "quality 0.92 -> tradeoff" in capsys.readouterr().out
    assert TierHead.load(heads / "default" / "head.json.previous").version == before.version, "rollback can undo it"
    assert main(calibrate) == 0, "the same tradeoff again: nothing to install, the head a rollback restores kept"
    assert f"the tradeoff it had: {after.version} unchanged" in capsys.readouterr().out
    assert TierHead.load(heads / "default" / "head.json.previous").version == before.version


def held(directory) -> bool:
    """Whether some change holds `directory` (tierwise.atomic.changing): a lock this cannot take without waiting."""
    import fcntl
    import os

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_calibrate_holds_the_heads_directory_from_reading_the_head_to_installing_it(tmp_path, monkeypatch):
    """As promote and learn do: a promotion installed between calibrate's read and its install would be lost."""
    import shutil

    from classifier_service.config import Config
    from tierwise_tools.commands import calibration

    heads = tmp_path / "heads"
    shutil.copytree(Config().heads_dir / "default", heads / "default")
    seen = []

    def probed(real, step):
        def call(*args, **kwargs):
            seen.append((step, held(heads)))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(calibration, "heads_in", probed(calibration.heads_in, "read"))
    monkeypatch.setattr(calibration, "install", probed(calibration.install, "install"))
    # 0.92: a target the shipped head has no tradeoff for, so there is a head to install (0.9's it has already).
    assert main(["calibrate", "--data", str(data_slice(tmp_path)), "--target-quality", "0.92", "--heads-dir",
                 str(heads), "--include-held-out"]) == 0
    assert seen == [("read", True), ("install", True)], "a promotion or learn waits for calibrate, and it for them"
    assert not held(heads), "and lets go when done"


def test_calibrate_refuses_a_handful_of_records_or_another_lineups(tmp_path, capsys):
    import shutil

    heads = tmp_path / "heads"
    shutil.copytree(Config().heads_dir, heads)
    served = {p: p.read_bytes() for p in heads.rglob("*") if p.is_file()}
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(data_slice(tmp_path).read_text().split("\n")[:10]) + "\n")
    assert main(["calibrate", "--data", str(few), "--include-held-out", "--heads-dir", str(heads)]) == 2
    assert "3 different queries among" in (err := capsys.readouterr().err) and "at least 25 are needed" in err
    routerbench = next(p for p in shared_files() if p.name.startswith("routerbench"))
    assert main(["calibrate", "--data", str(routerbench), "--head", "mistral7b-llama8b-nemotron51b",
                 "--heads-dir", str(heads)]) == 2
    assert "no records from head mistral7b-llama8b-nemotron51b's lineup" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in heads.rglob("*") if p.is_file()} == served, "no head was touched"


def test_each_shared_lineup_has_a_head_that_holds_quality_on_its_held_out_part():
    """The committed heads at their shipped 95% operating point, on records they were never fitted,
    selected or calibrated on: quality vs frontier >= 0.95 on the held-out part of the three files together,
    and on each file within int8 noise of it.

    Measured on an Intel Xeon: llmrouter 0.977, routerbench 0.970, zeroeval 0.958 (0.008 above 0.95, which is
    why a per-file 0.95 bar hinged on the CPU); pooled 0.970. With batch-mate embeddings: 0.981, 0.976, 0.966;
    pooled 0.976. Savings: 0.349, 0.354, 0.492 (bar 0.3)."""
    import numpy as np

    from classifier_service.config import Config
    from classifier_service.heads import HeadRegistry
    from tierwise.metrics import routing_metrics
    from tierwise_tools import evaluate

    registry = HeadRegistry.from_dir(Config().heads_dir)
    records, tiers = [], []
    for path in shared_files():
        test = split(load([path]))[1]
        head = registry.for_lineup(test[0].models)
        assert head.name != "default", f"no head trained on the lineup of {path.name}"
        replay = evaluate.embedding(test, 0.95, Config().encoder_dir, Config().heads_dir)
        op = replay.result(0.95)["operating_point"]
        assert op["quality_vs_frontier"] >= 0.95 - INT8_SLACK and op["cost_savings"] > 0.3, (path.name, op)
        records += replay.records
        tiers.append(replay.operating_point.tiers)
    pooled = routing_metrics(records, np.concatenate(tiers))
    assert pooled["quality_vs_frontier"] >= 0.95, pooled


def test_the_support_check_keeps_quality_on_a_kind_of_query_the_head_never_saw():
    """Train on zeroeval's GSM and CRUX questions only, then route its MATH level-5 questions: without the
    support check the head sends hard maths it never saw to the cheap tiers and quality collapses; with
    it, those queries go to tier 3 (decision 0008; python -m research.d0008_support_check).

    Measured on an Intel Xeon: 0.886 outside, quality 0.607 without the check and 0.963 with it (0.891, 0.596 and
    0.963 with batch-mate embeddings). With the check the quality lies within int8 noise of 0.95, so the test
    asserts what the check buys: most of the lost quality back, and a quality clear of that noise."""
    import numpy as np

    from classifier_service.config import Config
    from tierwise_tools.embeddings import embed_records, offline_encoder
    from tierwise_tools.fitting import route_unseen
    from tierwise.metrics import routing_metrics

    records = load([p for p in shared_files() if p.name.startswith("zeroeval")])
    x = embed_records(offline_encoder(Config().encoder_dir), records, Config().encoder_dir.parent / "embeddings")
    unseen = np.array([r.task == "math-l5" for r in records])
    train = ~unseen & ~np.array([r.held_out for r in records])
    assert unseen.sum() > 400 and train.sum() > 1000
    plain, checked, outside = route_unseen([r for r, t in zip(records, train) if t], x[train], x[unseen])
    new = [r for r, u in zip(records, unseen) if u]
    without, with_check = routing_metrics(new, plain), routing_metrics(new, checked)
    assert outside.mean() > 0.8
    assert without["quality_vs_frontier"] < 0.9, without
    assert with_check["quality_vs_frontier"] >= without["quality_vs_frontier"] + 0.3, (without, with_check)
    assert with_check["quality_vs_frontier"] >= 0.95 - INT8_SLACK, with_check


def test_a_lineup_head_considers_the_shipped_heads_as_a_prior_unless_told_not_to(tmp_path):
    """One lineup's first records: the shipped heads of other lineups are weighed as a prior (decision 0019); the
    shipped head of this very lineup is not, and --no-prior fits on the records alone."""
    subset = tmp_path / "routerbench.jsonl"
    path = next(p for p in shared_files() if p.name.startswith("routerbench"))
    with open(path) as f, subset.open("w") as out:
        for _, line in zip(range(200), f):
            out.write(line)
    assert main(["train", "--data", str(subset), "--out", str(tmp_path / "heads"), "--name", "rb"]) == 0
    card = TierHead.load(tmp_path / "heads" / "rb" / "head.json").card
    assert "/prior" in card["model"], "the prior was weighed"
    assert "mistral7b-gpt35-gpt4" not in card["model"], "not the head trained on this lineup"
    assert main(["train", "--data", str(subset), "--out", str(tmp_path / "heads"), "--name", "rb", "--no-prior"]) == 0
    assert "/prior" not in TierHead.load(tmp_path / "heads" / "rb" / "head.json").card["model"]



def test_records_that_name_no_models_are_one_lineup_that_builds_on_the_prior(tmp_path, capsys):
    """A user's own traffic exported without model names is one lineup, not a pool: it gets the prior too."""
    subset = tmp_path / "unnamed.jsonl"
    path = next(p for p in shared_files() if p.name.startswith("routerbench"))
    with open(path) as f, subset.open("w") as out:
        for _, line in zip(range(200), f):
            raw = json.loads(line)
            for outcome in raw["outcomes"]:
                outcome.pop("model", None)
            out.write(json.dumps(raw) + "\n")
    assert main(["train", "--data", str(subset), "--out", str(tmp_path / "heads"), "--name", "mine"]) == 0
    assert "several tier lineups" not in capsys.readouterr().err
    head = TierHead.load(tmp_path / "heads" / "mine" / "head.json")
    assert "/prior" in head.card["model"], "the prior was weighed"
    assert head.card["lineup"] == "one lineup; the records do not name its models" and head.models == ()
    assert head.card["data"] == "unnamed.jsonl (200 records)", "counted by file, whatever the records' source"

def test_a_bad_head_name_is_refused_before_any_work_and_the_version_is_printed(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--name", "arena-A", "--data", "unused.jsonl"])
    assert stop.value.code == 2 and "head name 'arena-A' must match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("tierwise ")



def test_train_refuses_an_out_where_a_head_sits_in_a_directory_of_another_name(tmp_path, capsys):
    """Written beside `prod/` holding head `default`, a new `default/` would make two heads of one name, which the
    classifier serving that directory refuses at its next start: refused before any fitting."""
    heads = tmp_path / "heads"
    TierHead.load(Config().heads_dir / "default" / "head.json").save(heads / "prod" / "head.json")
    records = tmp_path / "records.jsonl"
    records.write_text("")
    assert main(["train", "--data", str(records), "--out", str(heads), "--name", "default", "--no-prior"]) == 2
    assert "prod/head.json holds head 'default'" in capsys.readouterr().err
    assert sorted(p.name for p in heads.iterdir()) == ["prod"]
