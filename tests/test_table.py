"""Paper-style tables: published numbers reproduced, local results merged, ranks, renderers, CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from ood_bench.cli import main
from ood_bench.leaderboards.published import load_published
from ood_bench.leaderboards.tables import (
    build_table,
    latex_escape,
    load_results,
    model_backbone,
    render,
)

LATEX_CELL = re.compile(r"^(?:\\textbf\{(.*)\}|\\underline\{(.*)\}|(.*))$")


def _result(model, method, dataset, finished="2026-01-01T00:00:00", **metrics):
    """One results.jsonl line in the runner's schema (metrics are fractions or None)."""
    row = {"model": model, "method": method, "dataset": dataset, "auroc": None, "ap": None,
           "fpr95": None, "miou": None, "macc": None, "n_frames": 10, "metric_spec": "1",
           "config_hash": "abc", "version": "0.1.0", "started": finished, "finished": finished,
           "store": f"{model}__{method}__{dataset}.h5"}
    row.update(metrics)
    return row


@pytest.fixture
def results_dir(tmp_path):
    rows = [
        _result("deeplabv3plus-r101", "msp", "roadanomaly", auroc=0.99123, ap=0.5, fpr95=0.2),
        # an older line for the same triple: superseded by the later one above
        _result("deeplabv3plus-r101", "msp", "roadanomaly", "2025-01-01T00:00:00", auroc=0.1),
        _result("deeplabv3plus-r101", "energy", "roadanomaly", auroc=0.9, ap=0.4, fpr95=0.3),
        _result("deeplabv3plus-r101", "msp", "synth-acdc-poc", auroc=0.8, ap=0.25, fpr95=0.5,
                miou=0.61234, macc=0.75),
        _result("small_net", "max_logit%", "synth-acdc-poc", auroc=0.7, ap=0.125, fpr95=0.6,
                miou=0.5, macc=0.6),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _latex_rows(text: str) -> list[list[str]]:
    """Body rows of the tabular: cells with \\textbf/\\underline removed."""
    body = text.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    rows = []
    for line in body.splitlines():
        if line.endswith("\\\\"):
            cells = [c.strip() for c in line[:-2].split(" & ")]
            rows.append([next(g for g in LATEX_CELL.match(c).groups() if g is not None)
                         for c in cells])
    return rows


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4"])
def test_latex_reproduces_every_published_number(table):
    text = render(build_table(table), "latex")
    rows = _latex_rows(text)
    header = text.split("\\midrule", 1)[0]
    expected = load_published(table)
    # columns in the paper's order, as the header shows them
    columns = list(dict.fromkeys((r["dataset"], r["metric"]) for r in expected))
    assert header.count("$\\uparrow$") + header.count("\\downarrow$") == len(columns)
    backbone = None
    seen = 0
    for cells in rows:
        name, backbone = cells[0], cells[1] or backbone
        values = cells[2:]
        assert len(values) == len(columns)
        for column, value in zip(columns, values, strict=True):
            match = [r for r in expected if (r["method_display"], r["backbone"],
                                             r["dataset"], r["metric"]) ==
                     (name, backbone, *column)]
            if value == "-":
                assert not match
            else:
                assert [r["value"] for r in match] == [value]
                assert float(value) == float(match[0]["value"])
                seen += 1
    assert seen == len(expected)


def test_best_bold_and_second_underlined_per_backbone_group():
    text = render(build_table("table1"), "latex")
    lines = {line.split(" & ")[0] + "|" + str(i): line
             for i, line in enumerate(text.splitlines()) if " & " in line}
    deeplab_ours = next(v for k, v in lines.items() if k.startswith("Ours|")
                        and "96.40" in v)
    rpl = next(v for k, v in lines.items() if k.startswith("RPL+CoroCL|"))
    dense = next(v for k, v in lines.items() if k.startswith("Dense Hybrid|"))
    m2f_ours = next(v for k, v in lines.items() if k.startswith("Ours|") and "97.94" in v)
    eam = next(v for k, v in lines.items() if k.startswith("M2F-EAM|"))
    # higher is better: RoadAnomaly AUROC 96.40 best, 95.72 second (DeepLabv3+ group)
    assert "\\textbf{96.40}" in deeplab_ours and "\\underline{95.72}" in rpl
    # lower is better: SMIYC-RO21 FPR 0.24 best, 0.26 second
    assert "\\textbf{0.24}" in dense and "\\underline{0.26}" in deeplab_ours
    # ranked within the Mask2Former group, not over the whole column: 93.75 > 91.92
    assert "\\textbf{93.75}" in eam and "\\underline{91.92}" in m2f_ours
    # a lone value in its group (Mask2Former RoadAnomaly AUROC) is not ranked
    assert "& 97.94 &" in m2f_ours


def test_ties_share_a_rank():
    built = build_table("table1", datasets=["smiyc-ra21-test"], metrics=["ap"])
    rows = dict(built.groups)["DeepLabv3+"]
    rows[0].cells[("smiyc-ra21-test", "ap")] = "88.06"  # tie with "Ours"
    text = render(built, "markdown")
    assert text.count("**88.06**") == 2 and "<u>85.47</u>" in text


def test_local_results_side_by_side_with_published(results_dir):
    built = build_table("table1", load_results(results_dir))
    deeplab = dict(built.groups)["DeepLabv3+"]
    local = [row for row in deeplab if row.local]
    assert [r.display for r in local] == ["energy", "msp"]
    assert all(not r.local for r in deeplab[: -len(local)])  # "this run" block comes last
    msp = next(r for r in local if r.method == "msp")
    assert msp.cells[("roadanomaly", "auroc")] == "99.12"  # the latest line, in percent
    assert msp.cells[("synth-acdc-poc", "miou")] == "61.23"
    # published rows have no number for a local-only dataset
    assert ("synth-acdc-poc", "ap") in built.columns
    text = render(built, "latex")
    msp_line = next(line for line in text.splitlines() if line.startswith("msp$^\\dagger$"))
    # the local AUROC 99.12 now beats the paper's 96.40 in the DeepLabv3+ group
    assert "\\textbf{99.12}" in msp_line and "\\underline{96.40}" in text
    assert "$^\\dagger$ this run" in text.split("\\begin{tabular}")[0]


def test_local_only_table_groups_unknown_models_by_name(results_dir):
    built = build_table(results=load_results(results_dir))
    assert [name for name, _ in built.groups] == ["DeepLabv3+", "small_net"]
    rows = list(csv.DictReader(io.StringIO(render(built, "csv"))))
    small = next(r for r in rows if r["backbone"] == "small_net")
    assert small["source"] == "this run"
    assert small["synth-acdc-poc/ap"] == "12.50" and small["roadanomaly/auroc"] == ""
    assert list(rows[0])[:4] == ["backbone", "method", "method_display", "source"]


def test_model_backbone():
    assert model_backbone("deeplabv3plus-wrn38") == "DeepLabv3+"
    assert model_backbone("mask2former-swin-l") == "Mask2Former"
    assert model_backbone("small_net") == "small_net"


def test_columns_follow_datasets_and_metrics_selection():
    built = build_table("table2", datasets=["muad-challenge-test-ood", "acdc-poc"],
                        metrics=["miou", "fpr95"])
    assert built.columns == [("muad-challenge-test-ood", "fpr95"), ("muad-challenge-test-ood",
                                                                     "miou"),
                             ("acdc-poc", "fpr95"), ("acdc-poc", "miou")]
    markdown = render(built, "markdown")
    header = markdown.splitlines()[2]
    assert "MUAD FPR@95 ↓" in header and "ACDC-POC mIoU ↑" in header


def test_latex_escapes_special_characters():
    assert latex_escape("a_b & 5% #x $y {z}") == r"a\_b \& 5\% \#x $\$$y \{z\}"
    assert latex_escape("ood+ruleaug") == "ood+ruleaug"


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt: texlive-latex-base "
                           "texlive-latex-recommended)")
def test_standalone_latex_compiles(results_dir, tmp_path):
    built = build_table("table2", load_results(results_dir))
    dict(built.groups)["small_net"][0].display = "a_b & 50% $x# {y} ~z ^w \\ ood+ruleaug"
    source = tmp_path / "table.tex"
    source.write_text(render(built, "latex", standalone=True))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                           source.name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    assert "mktexpk" not in done.stdout + done.stderr  # only the stock Type 1 fonts


def test_standalone_is_a_complete_document():
    text = render(build_table("table4"), "latex", standalone=True)
    assert text.startswith("\\documentclass") and text.rstrip().endswith("\\end{document}")
    for command in ("\\usepackage{booktabs}", "\\toprule", "\\midrule", "\\bottomrule",
                    "\\multicolumn{3}{c}{RoadAnomaly}", "\\cmidrule(lr){3-5}"):
        assert command in text


# ---------------------------------------------------------------------------------------- CLI


def test_cli_prints_and_writes(results_dir, tmp_path):
    runner = CliRunner()
    shown = runner.invoke(main, ["table", "--published", "table1", "--format", "latex"])
    assert shown.exit_code == 0, shown.output
    assert shown.output == render(build_table("table1"), "latex")
    out = tmp_path / "sub" / "t.csv"
    written = runner.invoke(main, ["table", "--results", str(results_dir), "--published",
                                   "table1", "--datasets", "roadanomaly", "--metrics",
                                   "auroc,ap", "--format", "csv", "--out", str(out)])
    assert written.exit_code == 0, written.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[4:] == ["roadanomaly/auroc", "roadanomaly/ap"]
    assert {r["source"] for r in rows} == {"gao2024generalize", "this run"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--published", "table7"], "valid tables: table1, table2, table3, table4"),
        (["--published", "table1", "--metrics", "auc"], "valid metrics: auroc, ap, fpr95"),
        (["--published", "table1", "--datasets", "RoadAnomaly"],
         "datasets in this table: roadanomaly, smiyc-ra21-test, smiyc-ro21-test"),
        (["--published", "table1", "--metrics", "miou"], "metrics in this table: auroc, ap"),
        ([], "results folder 'runs' does not exist"),
        (["--format", "html", "--published", "table1"], "'html' is not one of"),
    ],
)
def test_cli_bad_input_exits_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["table", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_defaults_to_the_runners_out_folder(results_dir, monkeypatch):
    monkeypatch.chdir(results_dir.parent)
    results_dir.rename(results_dir.parent / "runs")
    result = CliRunner().invoke(main, ["table", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert {row["source"] for row in csv.DictReader(io.StringIO(result.output))} == {"this run"}


def test_cli_results_folder_without_results(tmp_path):
    runner = CliRunner()
    empty = runner.invoke(main, ["table", "--results", str(tmp_path)])
    assert empty.exit_code == 2 and "no results.jsonl in" in empty.output
    (tmp_path / "results.jsonl").write_text("\n")
    blank = runner.invoke(main, ["table", "--results", str(tmp_path)])
    assert blank.exit_code == 2 and "results.jsonl has no rows" in blank.output
    (tmp_path / "results.jsonl").write_text("{not json\n")
    broken = runner.invoke(main, ["table", "--results", str(tmp_path)])
    assert broken.exit_code == 2 and "line 1 is not JSON" in broken.output
