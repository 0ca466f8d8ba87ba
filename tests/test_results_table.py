import importlib.util
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    import sys

    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(model, valid, test, features=None):
    metrics = {"hr@10": test, "hr@20": 2 * test, "ndcg@10": test / 2, "ndcg@20": test}
    return {
        "dataset": "amazon-beauty",
        "model": model,
        "objective": "all_positions",
        "features": features,
        "valid": {"ndcg@20": valid},
        "test": metrics,
        "epochs_run": 12,
        "best_epoch": 2,
        "wall_seconds": 99.6,
        "train_sequences_per_second": 1234.4,
        "machine": "cpu",
    }


def test_best_validation_run_is_shown_with_the_gap_to_the_best_paper():
    table = _load("results_table")
    records = [
        _record("sasrec", 0.060, 0.0500, []),
        _record("sasrec", 0.061, 0.0490, []),
        _record("difsr", 0.070, 0.0600, ["attributes"]),
        _record("bert4rec", 0.050, 0.0400, []),
    ]
    lines = table.format_results(records).splitlines()
    # A title, a blank line, the header and its rule, one row per model (no dataset column: one table per dataset).
    assert lines[0] == "**Amazon Beauty** (`amazon-beauty`)" and lines[1] == ""
    assert len(lines) == 7
    # Cloze backbones are shown with the task they train on, whatever the record's objective says.
    bert = next(line for line in lines if "| bert4rec |" in line)
    assert "| cloze |" in bert and "all_positions" not in bert
    # The higher-validation SASRec run wins although its test number is lower; SASRec sorts before DIF-SR.
    assert lines[4].startswith("| sasrec | ids only | as shipped | all_positions | 1 |")
    assert "| 0.0490 ± – |" in lines[4]
    # Best published SASRec NDCG@20 is the ASIF paper's 0.0516 (HR@20 0.1225): gaps of HR@20 and NDCG@20.
    assert "0.1225 / 0.0516 (ASIF paper) | -0.0245 | -0.0026 |" in lines[4]
    difsr = next(line for line in lines if "| difsr |" in line)
    assert lines.index(difsr) > 4
    assert difsr.startswith("| difsr | attributes | as shipped |")
    assert "0.1284 / 0.0541 (DIF-SR paper) | -0.0084 | +0.0059 |" in difsr
    # No ranks files: no p-values; single-seed epochs, wall time and hardware as before.
    assert "| – | – | 12 (2) | 100 | cpu |" in difsr


def test_readme_block_is_replaced_and_missing_markers_fail():
    table = _load("results_table")
    text = f"intro\n{table.START}\nold\n{table.END}\noutro\n"
    assert table.replace_block(text, "new") == f"intro\n{table.START}\nnew\n{table.END}\noutro\n"
    with pytest.raises(ValueError, match="results-table"):
        table.replace_block("no markers", "new")


def test_every_published_row_has_the_four_metrics():
    published = _load("published")
    for key, sources in published.PUBLISHED.items():
        for source, row in sources.items():
            assert sorted(row) == ["hr@10", "hr@20", "ndcg@10", "ndcg@20"], (key, source)
            assert row["hr@20"] >= row["hr@10"] and row["ndcg@20"] >= row["ndcg@10"], (key, source)
    assert published.best_published("amazon-beauty", "comif") == (
        "COMIF paper",
        published.PUBLISHED[("amazon-beauty", "comif")]["COMIF paper"],
    )
    assert published.best_published("ml-100k", "sasrec") is None


HARDWARE = "Test CPU, 2 cores, 1 intra-op threads, no GPU"
USERS = [1, 2, 3, 4, 5, 6]


def _seeded(tmp_path, model, seed, hidden, valid, test, ranks=None, *, epochs=(20, 15), wall=100.0, tag=""):
    """A record as train_benchmark.py writes it, with its ranks file when `ranks` is given."""
    import numpy as np

    run_id = f"beauty-{model}-d{hidden}-seed{seed}{tag}"
    record = {
        "run_id": run_id,
        "commit": "abc123",
        "config": f"configs/amazon-beauty/{model}.yaml",
        "overrides": {"model.hidden_dim": hidden, "training.seed": seed, "training.run_dir": f"runs/{run_id}"},
        "resolved_config": {
            "dataset": {"source": "s3rec", "path": "data/beauty", "prepared_dir": "runs/data/beauty"},
            "model": {"name": model, "hidden_dim": hidden},
            "training": {"run_dir": f"runs/{run_id}", "seed": seed, "epochs": 50},
        },
        "seed": seed,
        "dataset_fingerprint": "fp-beauty",
        "hardware": HARDWARE,
        "machine": "x86_64 2 cpu",
        "model": model,
        "dataset": "amazon-beauty",
        "features": [] if model == "sasrec" else ["attributes"],
        "objective": "all_positions",
        "epochs_run": epochs[0],
        "best_epoch": epochs[1],
        "wall_seconds": wall,
        "train_sequences_per_second": 500.0,
        "valid": {"hr@10": 0.1, "hr@20": 0.15, "ndcg@10": valid - 0.01, "ndcg@20": valid},
        "test": dict(zip(("hr@10", "hr@20", "ndcg@10", "ndcg@20"), test)),
    }
    if ranks is not None:
        os.makedirs(tmp_path / "ranks", exist_ok=True)
        record["ranks_file"] = f"ranks/{run_id}.npz"
        np.savez_compressed(
            tmp_path / record["ranks_file"], user_ids=np.array(USERS, np.int32), ranks=np.array(ranks, np.int32)
        )
    return record


SASREC_RANKS = {1: [1, 5, 30, 2, 40, 9], 2: [2, 4, 25, 3, 50, 12], 3: [1, 6, 22, 2, 33, 8]}
COMIF_RANKS = {1: [1, 2, 10, 1, 18, 3], 2: [1, 3, 21, 2, 15, 4], 3: [2, 2, 9, 1, 30, 5]}
DIFSR_RANKS = {1: [1, 3, 12, 2, 25, 4], 2: [2, 3, 19, 1, 22, 6], 3: [1, 4, 11, 3, 21, 5]}


def _synthetic(tmp_path):
    """Seeded groups of SASRec, COMIF and DIF-SR with ranks files, and old-format records."""
    records = [
        # Superseded by the later run of the same config and seed.
        _seeded(tmp_path, "sasrec", 1, 64, 0.070, (0.5, 0.5, 0.5, 0.090), tag="-old"),
    ]
    for seed, (hr20, ndcg20) in zip((1, 2, 3), ((0.11, 0.049), (0.12, 0.050), (0.13, 0.054))):
        records.append(_seeded(tmp_path, "sasrec", seed, 64, 0.060, (0.08, hr20, 0.04, ndcg20), SASREC_RANKS[seed]))
    # A SASRec config with a better validation NDCG@20 but one seed only: not selected over the three-seed config,
    # and no reference for the three-seed groups.
    records.append(_seeded(tmp_path, "sasrec", 1, 128, 0.065, (0.09, 0.125, 0.045, 0.052), SASREC_RANKS[3]))
    comif = zip((1, 2, 3), (0.070, 0.072, 0.074), (0.08, 0.09, 0.10), (0.10, 0.12, 0.14), (0.050, 0.053, 0.056))
    for seed, valid, hr10, hr20, ndcg20 in comif:
        epochs, wall = (18 + 2 * seed, 13 + 2 * seed), 90.0 + 10 * seed
        test = (hr10, hr20, 0.04 + 0.002 * (seed - 1), ndcg20)
        records.append(_seeded(tmp_path, "comif", seed, 64, valid, test, COMIF_RANKS[seed], epochs=epochs, wall=wall))
    # Better test, worse validation: must not be selected.
    for seed in (1, 2, 3):
        records.append(_seeded(tmp_path, "comif", seed, 128, 0.060, (0.15, 0.2, 0.06, 0.0777), COMIF_RANKS[seed]))
    for seed in (1, 2, 3):
        records.append(_seeded(tmp_path, "difsr", seed, 64, 0.066, (0.09, 0.125, 0.044, 0.052), DIFSR_RANKS[seed]))
    # Old-format records: no resolved config, seed or ranks.
    records.append(_record("bert4rec", 0.050, 0.0300, []))
    records.append(dict(_record("sasrec", 0.050, 0.0250, []), dataset="amazon-sports"))
    records.append(dict(_record("nova", 0.050, 0.0200, ["attributes"]), dataset="ml-1m"))
    return records


def _user_means(ranks_by_seed):
    import numpy as np

    ranks = np.array([ranks_by_seed[seed] for seed in (1, 2, 3)], dtype=np.float64)
    return np.where(ranks <= 20, 1 / np.log2(ranks + 1), 0.0).mean(axis=0)


def _p_cell(result):
    p = result["p_value"]
    return f"{p:.3f} ({result['mean_diff']:+.4f})" if p >= 0.001 else f"{p:.1e} ({result['mean_diff']:+.4f})"


def test_seed_groups_are_aggregated_selected_on_validation_and_tested(tmp_path):
    table = _load("results_table")
    paired = _load("paired")
    text = table.format_results(_synthetic(tmp_path), str(tmp_path))
    blocks = text.split("\n\n")
    titles = [block for block in blocks if block.startswith("**")]
    assert titles == [
        "**Amazon Beauty** (`amazon-beauty`)",
        "**Amazon Sports** (`amazon-sports`)",
        "**ml-1m** (`ml-1m`)",
    ]
    lines = text.splitlines()
    comif = [line for line in lines if line.startswith("| comif |")]
    sasrec = [line for line in lines if line.startswith("| sasrec |")]
    assert len(comif) == 1 and len(sasrec) == 2  # Beauty's selected SASRec group and Sports' old record
    comif = comif[0]

    # Mean ± sample std over the three seeds: HR@10 0.08/0.09/0.10, HR@20 0.10/0.12/0.14, NDCG@10 0.040/0.042/0.044,
    # NDCG@20 0.050/0.053/0.056; gaps to the COMIF paper's 0.1449 / 0.0592.
    assert comif.startswith("| comif | attributes | hidden_dim=64 | all_positions | 3 (1, 2, 3) |")
    assert "| 0.0900 ± 0.0100 | 0.1200 ± 0.0200 | 0.0420 ± 0.0020 | 0.0530 ± 0.0030 |" in comif
    assert "| 0.1449 / 0.0592 (COMIF paper) | -0.0249 | -0.0062 |" in comif
    # Epochs run (best) per seed, mean wall time (100, 110, 120 s), hardware.
    assert comif.endswith(f"| 20/22/24 (15/17/19) | 110 | {HARDWARE} |")
    # The better-test, worse-validation config (test NDCG@20 0.0777) is not chosen.
    assert "0.0777" not in text

    # SASRec: the one-seed d = 128 config has the better validation NDCG@20 (0.065 against 0.060), but the row is
    # the three-seed d = 64 group: NDCG@20 0.049/0.050/0.054, mean 0.0510, sample std sqrt(14e-6 / 2) = 0.0026.
    beauty_sasrec = sasrec[0]
    assert beauty_sasrec.startswith("| sasrec | ids only | hidden_dim=64 | all_positions | 3 (1, 2, 3) |")
    assert "| 0.0800 ± 0.0000 | 0.1200 ± 0.0100 | 0.0400 ± 0.0000 | 0.0510 ± 0.0026 |" in beauty_sasrec
    assert "| – | – | 20/20/20 (15/15/15) |" in beauty_sasrec  # no test against itself
    assert "0.0520 ± –" not in text

    # The p-value against SASRec uses the three-seed d = 64 group (ranks for seeds 1-3): the paired test on the
    # per-user NDCG@20 averaged over the seeds; ASIF and COMIF are also tested against DIF-SR.
    comif_means = _user_means(COMIF_RANKS)
    vs_sasrec = paired.paired_test(comif_means, _user_means(SASREC_RANKS))
    vs_difsr = paired.paired_test(comif_means, _user_means(DIFSR_RANKS))
    assert vs_sasrec["mean_diff"] > 0 and vs_sasrec["n"] == 6
    assert f"| -0.0062 | {_p_cell(vs_sasrec)} | {_p_cell(vs_difsr)} | 20/22/24" in comif
    difsr = next(line for line in lines if line.startswith("| difsr |"))
    vs_sasrec_difsr = paired.paired_test(_user_means(DIFSR_RANKS), _user_means(SASREC_RANKS))
    assert f"| {_p_cell(vs_sasrec_difsr)} | – |" in difsr  # DIF-SR is not tested against itself

    # Old-format records render as single-seed groups without std or p-values.
    bert = next(line for line in lines if line.startswith("| bert4rec |"))
    assert "| cloze | 1 | 0.0300 ± – | 0.0600 ± – | 0.0150 ± – | 0.0300 ± – |" in bert
    assert "| – | – | 12 (2) | 100 | cpu |" in bert
    assert "| 0.0500 ± – |" in sasrec[1] and "0.0773 / 0.0295 (DIF-SR paper)" in sasrec[1]
    assert "| nova | attributes | as shipped |" in text.split("**ml-1m**")[1]


def test_superseded_seed_and_all_groups_listing(tmp_path):
    table = _load("results_table")
    records = _synthetic(tmp_path)
    groups = [group for group in table.group_runs(records) if group.dataset == "amazon-beauty"]
    sasrec64 = next(group for group in groups if group.model == "sasrec" and '"hidden_dim": 64' in group.key)
    # The rerun of seed 1 replaced the earlier one: three runs, NDCG@20 0.049/0.050/0.054 -> 0.0510 ± 0.0026.
    assert sasrec64.seeds == [1, 2, 3]
    assert table._mean_std(sasrec64, "test", "ndcg@20") == "0.0510 ± 0.0026"
    assert table._mean_std(sasrec64, "test", "hr@20") == "0.1200 ± 0.0100"
    assert len(groups) == 6  # sasrec d64, sasrec d128, comif d64, comif d128, difsr, bert4rec

    text = table.format_results(records, str(tmp_path), all_groups=True)
    assert "| valid NDCG@20 (mean ± std) | selected |" in text
    comif = [line for line in text.splitlines() if line.startswith("| comif |")]
    assert len(comif) == 2
    # Sorted by validation within a model; only the validation-best group is marked.
    assert "| 3 (1, 2, 3) | 0.0720 ± 0.0020 | ✓ |" in comif[0]
    assert "| 3 (1, 2, 3) | 0.0600 ± 0.0000 |  |" in comif[1] and "0.0777 ± 0.0000" in comif[1]


def test_an_option_added_later_with_its_default_does_not_split_a_group(tmp_path):
    table = _load("results_table")
    before = _seeded(tmp_path, "sasrec", 1, 64, 0.060, (0.08, 0.11, 0.04, 0.049))
    after = _seeded(tmp_path, "sasrec", 2, 64, 0.050, (0.07, 0.10, 0.03, 0.040))
    # Written by a later version: the options it added are stored with their defaults.
    after["resolved_config"]["training"].update(optimizer="adam", loss=None, input_sharding="auto")
    changed = _seeded(tmp_path, "sasrec", 3, 64, 0.070, (0.09, 0.12, 0.05, 0.051))
    changed["resolved_config"]["training"].update(optimizer="lazy_adam")
    groups = table.group_runs([before, after, changed])
    assert sorted(group.seeds for group in groups) == [[1, 2], [3]]
    # Both seeds count in the row, the worse one included: mean NDCG@20 (0.049 + 0.040) / 2.
    two = next(group for group in groups if group.seeds == [1, 2])
    assert table._mean_std(two, "test", "ndcg@20") == "0.0445 ± 0.0064"
    # A stored config this version rejects is grouped as stored.
    odd = _seeded(tmp_path, "sasrec", 1, 64, 0.060, (0.08, 0.11, 0.04, 0.049))
    odd["resolved_config"]["training"]["no_such_option"] = 1
    assert len(table.group_runs([before, odd])) == 2


def test_reference_needs_ranks_for_every_seed_and_the_same_data(tmp_path):
    table = _load("results_table")
    records = _synthetic(tmp_path)
    groups = table.group_runs(records)
    comif = table.best_groups(groups)[("amazon-beauty", "comif")]
    reference = table.reference_group(comif, "sasrec", groups, str(tmp_path))
    assert reference.seeds == [1, 2, 3] and '"hidden_dim": 64' in reference.key
    # Without the ranks file of seed 2, the d = 64 SASRec group no longer qualifies.
    os.remove(tmp_path / reference.runs[1]["ranks_file"])
    assert table.reference_group(comif, "sasrec", groups, str(tmp_path)) is None
    # Nor does a baseline prepared from other data.
    other = table.Group(
        "amazon-beauty", "difsr", "x", [dict(run, dataset_fingerprint="fp-other") for run in comif.runs]
    )
    assert table.reference_group(comif, "difsr", groups + [other], str(tmp_path)).runs[0]["dataset_fingerprint"] == (
        "fp-beauty"
    )
    assert table.reference_group(comif, "difsr", [other], str(tmp_path)) is None
    # No results directory: no p-values at all.
    assert table.reference_group(comif, "difsr", groups, None) is None


def test_command_line_prints_groups_and_rewrites_only_the_readme_block(tmp_path, capsys):
    import json

    table = _load("results_table")
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(record) + "\n" for record in _synthetic(tmp_path)))
    assert table.main(["--results", str(results), "--groups"]) == 0
    assert "| selected |" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{table.START}\nold\n{table.END}\noutro\n")
    assert table.main(["--results", str(results), "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    text = readme.read_text()
    assert text == f"intro\n{table.START}\n{printed.rstrip()}\n{table.END}\noutro\n"
    assert "| selected |" not in text and "(1, 2, 3)" in text


def test_curves_are_printed_per_run_and_epoch():
    from results_table import format_curves

    records = [
        {"run_id": "a", "objective": "all_positions", "curves": {"val_ndcg@20": [0.01, 0.02345]}},
        {"run_id": "b", "objective": "prefix", "curves": {"val_ndcg@20": [0.03]}},
        {"run_id": "old"},
    ]
    assert format_curves(records).splitlines() == [
        "| run | objective | 1 | 2 |",
        "|---|---|---|---|",
        "| a | all_positions | 0.0100 | 0.0234 |",
        "| b | prefix | 0.0300 |  |",
    ]
    assert format_curves(records, "val_hr@20") == "(no run recorded val_hr@20 per epoch)"


def test_benchmark_configs_are_named_in_the_changes_column():
    from results_table import _changes

    record = {"config": "benchmarks/configs/amazon-beauty-asif-tuned.yaml", "overrides": {"training.epochs": 20}}
    assert _changes(record) == "`amazon-beauty-asif-tuned.yaml`, epochs=20"
    assert _changes({"config": "configs/amazon-beauty/asif.yaml", "overrides": {"training.seed": 3}}) == "as shipped"


def test_verdict_compares_our_sign_and_p_value_with_the_papers():
    table = _load("results_table")
    agree = {"ASIF paper": 0.002, "COMIF paper": 0.001}
    disagree = {"ASIF paper": 0.002, "DIF-SR paper": -0.001}
    assert table.claim_verdict(agree, {"mean_diff": 0.001, "p_value": 0.01}) == "holds"
    assert table.claim_verdict(agree, {"mean_diff": -0.001, "p_value": 0.01}) == "reversed"
    # At the threshold (0.05) the difference is not established, whatever its sign.
    assert table.claim_verdict(agree, {"mean_diff": -0.001, "p_value": 0.05}) == "not significant"
    assert table.claim_verdict(agree, {"mean_diff": 0.003, "p_value": 0.2}) == "not significant"
    assert table.claim_verdict(agree, None) == "–"
    assert table.claim_verdict(disagree, {"mean_diff": -0.001, "p_value": 1e-5}, "nova", "sasrec_f") == (
        "papers disagree; sasrec_f ahead here"
    )
    assert table.claim_verdict(disagree, {"mean_diff": 0.001, "p_value": 1e-5}, "nova", "sasrec_f") == (
        "papers disagree; nova ahead here"
    )
    assert table.claim_verdict(disagree, {"mean_diff": 0.001, "p_value": 0.3}) == (
        "papers disagree; no significant difference here"
    )


def test_claims_pair_every_two_models_a_paper_reports_oriented_by_the_papers(tmp_path):
    table = _load("results_table")
    paired = _load("paired")
    records = _synthetic(tmp_path)
    lines = table.format_claims(records, str(tmp_path)).splitlines()
    # Only Beauty has two models that a paper reports together (Sports and ml-1m have one model each).
    assert lines[0] == "**Amazon Beauty** (`amazon-beauty`)" and "**Amazon Sports**" not in lines
    rows = {line.split(" | ")[0][2:]: line for line in lines[4:]}
    # Selected groups sasrec, bert4rec (old record), difsr, comif: the six pairs; bert4rec has no ranks file.
    assert sorted(rows) == sorted(
        [
            "sasrec > bert4rec",
            "difsr > sasrec",
            "comif > sasrec",
            "difsr > bert4rec",
            "comif > bert4rec",
            "comif > difsr",
        ]
    )
    # Oriented by the papers: every paper puts DIF-SR above SASRec (ASIF 0.0526 - 0.0516, COMIF 0.0526 - 0.0512,
    # DIF-SR 0.0541 - 0.0464), listed by source name.
    difsr_rank = _user_means(DIFSR_RANKS)
    vs_sasrec = paired.paired_test(difsr_rank, _user_means(SASREC_RANKS))
    p = vs_sasrec["p_value"]
    verdict = "holds" if p < 0.05 and vs_sasrec["mean_diff"] > 0 else "not significant"
    assert rows["difsr > sasrec"] == (
        "| difsr > sasrec | ASIF paper +0.0010, COMIF paper +0.0014, DIF-SR paper +0.0077 | "
        f"{vs_sasrec['mean_diff']:+.4f} (1, 2, 3) | {table._p_text(p)} | {verdict} |"
    )
    vs_difsr = paired.paired_test(_user_means(COMIF_RANKS), difsr_rank)
    assert rows["comif > difsr"].startswith(f"| comif > difsr | COMIF paper +0.0066 | {vs_difsr['mean_diff']:+.4f} ")
    assert rows["sasrec > bert4rec"].endswith("| – | – | – |")


def test_claims_use_the_seeds_both_groups_ran(tmp_path):
    table = _load("results_table")
    paired = _load("paired")
    records = [r for r in _synthetic(tmp_path) if not (r["model"] == "difsr" and r.get("seed") == 3)]
    groups = table.best_groups(table.group_runs(records))
    difsr, sasrec = groups[("amazon-beauty", "difsr")], groups[("amazon-beauty", "sasrec")]
    result = table.paired_groups(difsr, sasrec, str(tmp_path))
    ranks = {seed: DIFSR_RANKS[seed] for seed in (1, 2)}
    expected = paired.paired_test(_mean_over(ranks, (1, 2)), _mean_over({s: SASREC_RANKS[s] for s in (1, 2)}, (1, 2)))
    assert result["seeds"] == [1, 2] and abs(result["mean_diff"] - expected["mean_diff"]) < 1e-12
    assert abs(result["p_value"] - expected["p_value"]) < 1e-12
    # Data with another fingerprint gives no comparison.
    other = table.Group("amazon-beauty", "difsr", "x", [dict(r, dataset_fingerprint="fp-other") for r in difsr.runs])
    assert table.paired_groups(other, sasrec, str(tmp_path)) is None


def _mean_over(ranks_by_seed, seeds):
    import numpy as np

    ranks = np.array([ranks_by_seed[seed] for seed in seeds], dtype=np.float64)
    return np.where(ranks <= 20, 1 / np.log2(ranks + 1), 0.0).mean(axis=0)
