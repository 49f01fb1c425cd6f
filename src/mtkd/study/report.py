"""The study report: results.csv, results.json, PNG plots, report.md and a self-contained report.html.

The report is a list of blocks (headings, paragraphs, tables, images) rendered twice, to
Markdown (images as files next to it) and to HTML (images embedded), so both say the same.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from pathlib import Path

from mtkd.console import say
from mtkd.io import atomic_write, read_json
from mtkd.study import plots
from mtkd.study.answers import Group, answer, best_by_val, paired, reading_of, student_groups, teacher_rows
from mtkd.study.config import SeedRange, StudyConfig
from mtkd.study.deliver import deliver
from mtkd.study.plan import Job
from mtkd.study.results import add_latency, collect, run_path, write_results
from mtkd.study.stats import look_level, mean_std

Block = tuple


def _acc(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _diff(iv: dict) -> str:
    return f"{100 * iv['diff']:+.2f}"


def _ci(iv: dict) -> str:
    if iv["lo"] == -math.inf:
        return "n/a"
    return f"[{100 * iv['lo']:+.2f}, {100 * iv['hi']:+.2f}]"


READING = {"above": "above 0", "below": "below 0", "equivalent": "inside ±margin", "unsettled": "not settled"}


def _sizes(cfg: StudyConfig) -> str:
    if cfg.min_teachers > 1:
        return f"{cfg.min_teachers} to {_plural(cfg.max_teachers, 'teacher')}"
    return f"up to {_plural(cfg.max_teachers, 'teacher')}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _over_seeds(runs: list[dict], key: str) -> str:
    values = [float(x[key]) for x in runs]
    return _acc(*mean_std(values)) if len(values) > 1 else _acc(values[0])


def _teacher_rows(rows: list[dict], study: Path) -> list[list[str]]:
    out = []
    for label, runs in teacher_rows(rows).items():
        spec = read_json(run_path(study, runs[0]) / "best.json")["model"]
        how = f"{spec.get('mode', '?')}, {spec.get('head')} head, {spec.get('input_size')} px"
        r = runs[0]

        out.append([label, how, ", ".join(str(x["seed"]) for x in runs), f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M",
                    f"{r['latency_ms']:.2f}", _over_seeds(runs, "val_acc"), _over_seeds(runs, "test_acc"), _over_seeds(runs, "test_acc_last")])  # fmt: skip
    return out


def _seeds_text(cfg: StudyConfig) -> str:
    if isinstance(cfg.seeds, SeedRange):
        return (f"sequential seeds: {cfg.seeds.min} for every configuration, then one more per look for the "
                f"configurations of the questions not settled, up to {cfg.seeds.max} ({cfg.looks} looks)")  # fmt: skip
    return f"seeds {', '.join(map(str, cfg.seeds))}"


def _how_to_read(cfg: StudyConfig, level: float) -> str:
    looks = (f" The answers may be read at {cfg.looks} looks (sequential seeds), so each look uses alpha / "
             f"{cfg.looks} (a Bonferroni split over looks): the chance of a false answer over all looks stays "
             f"at most {cfg.alpha}, and the intervals are {100 * level:.4g}% intervals.") if cfg.looks > 1 else ""  # fmt: skip
    return ("How to read: accuracies are test accuracy in %, mean ± standard deviation over seeds, of the weights from "
            "the epoch with the best validation accuracy ('final' = the last epoch). The 'best' configuration is chosen "
            "on mean validation accuracy, never on test. Differences are in percentage points with their "
            f"{100 * level:.4g}% confidence interval (CI): paired over the seeds both sides have for Q1, Q3 and "
            "the 'vs alone' column; for Q2 one-sample against "
            "the teacher's accuracy, or Welch's two-sample interval when the teacher was adapted with several seeds. "
            f"An interval inside ±{cfg.equivalence:.2f} points (the study's equivalence margin) reads as no difference "
            "that matters, even if it excludes zero (the two one-sided tests reading); else an interval above zero is "
            "a gain and one below zero a loss; an interval across a boundary is Not settled." + looks)  # fmt: skip


def _blocks(
    cfg: StudyConfig, rows: list[dict], summaries: dict, answers: dict, failures: list[str], study: Path
) -> list[Block]:
    level = look_level(cfg.alpha, cfg.looks)
    b: list[Block] = [("h1", f"mtkd study: {cfg.name}")]
    b.append(("p", f"Dataset {cfg.data.name}; {_seeds_text(cfg)}; teachers adapted with "
                   f"{_plural(cfg.teacher_seeds, 'seed')} from {cfg.teacher_seed} (the students learn from seed "
                   f"{cfg.teacher_seed}); combinations of {_sizes(cfg)}; alpha "
                   f"{cfg.alpha}, equivalence margin ±{cfg.equivalence:.2f} points. Written "
                   f"{time.strftime('%Y-%m-%d %H:%M')} from {len(rows)} finished runs (results.csv)."))  # fmt: skip
    if failures:
        b.append(("p", "**Incomplete**: these runs failed or were skipped and are missing from every table: "
                  + "; ".join(failures)))  # fmt: skip
    b.append(("h2", "The answers"))
    for student, a in answers.items():
        if len(answers) > 1:
            b.append(("h3", student))
        for q, title in (("q1", "Q1. Does the student improve with transfer?"),
                         ("q2", "Q2. Does the student beat its teacher?"),
                         ("q3", "Q3. Is one teacher enough?")):  # fmt: skip
            sentence = (
                a[q]["sentence"] if a.get(q) else "Not asked: the study lacks the runs this question needs."
            )
            b.append(("p", f"**{title}** {sentence}"))
        for warning in a.get("warnings", []):
            b.append(("p", f"**Warning**: {warning}"))
    b.append(("p", _how_to_read(cfg, level)))
    teacher_table = _teacher_rows(rows, study)
    if teacher_table:
        b.append(("h2", "Teachers"))
        b.append(("table", ["teacher", "adapted", "seeds", "params", "MACs/image", "latency ms/image", "val acc",
                            "test acc", "test acc (final)"], teacher_table))  # fmt: skip
    groups_by_student = student_groups(rows)
    t_rows = teacher_rows(rows)
    for student, a in answers.items():
        groups = groups_by_student[student]
        b.append(("h2", f"Student {student}: every configuration"))
        table = []
        for c in a["configs"]:
            vs, vs_last = c.get("vs_alone"), c.get("vs_alone_last")
            table.append([c["label"], str(c["n"]), _acc(**c["val_acc"]), _acc(**c["test_acc"]), _acc(**c["test_acc_last"]),
                          _diff(vs) if vs else "", _ci(vs) if vs else "", READING[vs["reading"]] if vs else "",
                          _diff(vs_last) if vs_last else "", _ci(vs_last) if vs_last else ""])  # fmt: skip
        b.append(("table", ["configuration", "seeds", "val acc", "test acc", "test acc (final)", "vs alone (points)",
                            f"{100 * level:.4g}% CI", "reading", "vs alone, final", "CI (final)"], table))  # fmt: skip
        prefix = f"plots/{student}-"
        if a.get("q2"):
            b.append(("h3", "Q2. The student against each teacher"))
            chosen = a.get("chosen", "best on validation")
            b.append(("p", f"Student configuration: {a['q2']['student']} ({chosen})."))
            top = next(g for g in groups if g.short == a["q2"]["student"])
            srow = next(iter(top.rows.values()))
            q2 = []
            for t in a["q2"]["teachers"]:
                trow = t_rows[t["teacher"]][0]
                q2.append([t["teacher"], _over_seeds(t_rows[t["teacher"]], "test_acc"), _acc(*top.stat("test_acc")), _diff(t["interval"]),
                           _ci(t["interval"]), t["verdict"], f"{srow['params']:,} / {trow['params']:,}",
                           f"{srow['macs'] / 1e6:.1f}M / {trow['macs'] / 1e6:.1f}M",
                           f"{srow['latency_ms']:.2f} / {trow['latency_ms']:.2f}"])  # fmt: skip
            b.append(("table", ["teacher", "teacher test acc", "student test acc", "student - teacher (points)",
                                f"{100 * level:.4g}% CI", "beats it?", "params (student / teacher)",
                                "MACs (student / teacher)", "latency ms (student / teacher)"], q2))  # fmt: skip
        if a["q3"].get("verdict") != "Not asked":
            b.append(("h3", "Q3. Accuracy against the number of teachers"))
            b.append(("table", ["teachers", "best configuration (validation)", "its test acc", "mean over configurations", "configurations"],
                      [[str(s["n_teachers"]), s["best"], _acc(**s["test_acc"]), _acc(s["all_configs_mean"]), str(s["configs"])]
                       for s in a["by_size"]]))  # fmt: skip
            b.append(("img", plots.accuracy_vs_teachers(groups, study / f"{prefix}teachers.png"),
                      "Test accuracy against the number of teachers: per method the best teacher set of each size "
                      "(mean ± std over seeds); dots are the other sets; the grey band is the student alone."))  # fmt: skip
        # A search's pick is what the figures show; a grid's, the best on validation (the same as Q1's).
        searched = a.get("chosen") == "chosen by the search"
        chosen = next((g for g in groups if searched and a.get("q1") and g.short == a["q1"]["best"]), None)
        b.append(("h3", "Learning curves, per-class change, confusion"))
        b.append(("img", plots.learning_curves(groups, study, study / f"{prefix}curves.png", prefer=chosen),
                  "Validation accuracy per epoch: the student alone and, per method, "
                  + ("the search's pick or the best configuration." if chosen else "the best configuration.")))  # fmt: skip
        alone = next((g for g in groups if g.method == "none"), None)
        best_transfer = chosen or best_by_val([g for g in groups if g.method != "none"])
        if alone is not None and best_transfer is not None:
            b.append(("img", plots.per_class_change(best_transfer, alone, summaries, study / f"{prefix}per-class.png"),
                      f"Per-class test accuracy of {best_transfer.short} minus the student alone, mean over seeds."))  # fmt: skip
        top = chosen or best_by_val(groups)
        assert top is not None
        best_row = max(top.rows.values(), key=lambda r: r["val_acc"])
        which = "the search's pick" if chosen else "the best student"
        b.append(("img", plots.confusion(summaries[best_row["run"]], f"{student}, {top.short}, seed {best_row['seed']}",
                                         study / f"{prefix}confusion.png"),
                  f"Test confusion matrix of {which} ({top.short}, seed {best_row['seed']}, the seed with the "
                  "best validation accuracy); rows are true classes."))  # fmt: skip
        b.append(("img", plots.accuracy_vs_cost(_cost_points(groups, rows, chosen), study / f"{prefix}cost.png"),
                  "Test accuracy against parameters and CPU latency per image, for each student configuration "
                  "(mean ± std) and each teacher."))  # fmt: skip
    b.append(("h2", "Reproduce"))
    b.append(("code", f"mtkd study {study / 'study.yaml'}"))
    b.append(("p", "Every run is an ordinary mtkd run folder (config.yaml, checkpoints, metrics.csv, TensorBoard logs); "
                   "results.csv has one row per run and results.json the same rows with these answers."))  # fmt: skip
    return b


def _cost_points(groups: list[Group], rows: list[dict], chosen: Group | None = None) -> list[dict]:
    points = []
    best = chosen or best_by_val([g for g in groups if g.method != "none"])
    for g in groups:
        row = next(iter(g.rows.values()))
        m, s = g.stat("test_acc")
        note = (
            f"{g.student} alone" if g.method == "none" else (f"{g.student}, {g.short}" if g is best else None)
        )
        points.append({"label": g.short, "kind": "student", "params": row["params"], "latency_ms": row["latency_ms"],
                       "acc": m, "std": s, "note": note})  # fmt: skip
    for label, runs in teacher_rows(rows).items():
        m, s = mean_std([float(r["test_acc"]) for r in runs])
        points.append({"label": label, "kind": "teacher", "params": runs[0]["params"],
                       "latency_ms": runs[0]["latency_ms"], "acc": m, "std": s})  # fmt: skip
    return points


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block], study: Path) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```")
        elif kind == "table":
            head, body = block[1], block[2]
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1].relative_to(study)})\n\n*{block[2]}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then the Markdown the blocks use: **bold** and [links](relative/path)."""
    parts = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", text)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td{white-space:nowrap}td:first-child,th:first-child{text-align:left;white-space:normal}
.wide{overflow-x:auto}img{max-width:100%}figure{margin:1.5em 0}
figcaption{font-size:0.9em;color:#555}code,pre{background:#f6f6f6;padding:2px 4px}pre{overflow-x:auto;white-space:pre-wrap}"""


def to_html(blocks: list[Block], title: str) -> str:
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
    ]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2]
            )
            out.append(
                f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
            )
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(block[2])}</figcaption></figure>")  # fmt: skip
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(cfg: StudyConfig, jobs: list[Job], failures: list[str], records: dict | None = None) -> dict:
    """results.csv/json, report.md and report.html from the finished runs; `records`: each
    student's search (screening, path, picks), for a study that searched its pool."""
    study = Path(cfg.output)
    records = records or {}
    every, summaries = collect(jobs, study)
    if not any(r["kind"] == "student" for r in every):
        say("no student run finished: no report")
        return {}
    say("report: timing inference of each architecture (once) and drawing the plots")
    add_latency(every, study, cfg.latency)
    rows = [r for r in every if r["kind"] == "teacher" or r.get("stage", "confirm") == "confirm"]
    limit = cfg.seeds.max if isinstance(cfg.seeds, SeedRange) else None
    from mtkd.study.search import picks_of

    answers = answer(rows, reading_of(cfg), limit, picks_of(records))
    (study / "plots").mkdir(exist_ok=True)
    blocks = _blocks(cfg, rows, summaries, answers, failures, study)
    # A search's screening and steps come right after the answers (how the compared sets were chosen).
    at = next(
        (i for i, (kind, *rest) in enumerate(blocks) if kind == "h2" and rest[0] == "Teachers"),
        len(blocks) - 3,
    )
    model = deliver(cfg.name, rows, answers, study)
    blocks[at:at] = model_blocks(model) + search_blocks(cfg, every, records, answers, study)
    write_results(every, study, {"alpha": cfg.alpha, "equivalence": cfg.equivalence, "looks": cfg.looks,
                                 "level": look_level(cfg.alpha, cfg.looks), "answers": answers, "failures": failures,
                                 "search": {s: r.to_dict() for s, r in records.items()}, "model": model})  # fmt: skip
    atomic_write(study / "report.md", to_markdown(blocks, study))
    atomic_write(study / "report.html", to_html(blocks, f"mtkd study: {cfg.name}"))
    for student, a in answers.items():
        say(f"[bold]{student}[/bold]")
        r = records.get(student)
        if r is not None and r.chosen:
            say(f"  search ({r.strategy}): chose {r.chosen[0]} from {' + '.join(r.chosen[1])}; spent "
                f"{r.spent:.1f} student-run equivalents (the grid: {r.grid_runs} runs)")  # fmt: skip
        for q in ("q1", "q2", "q3"):
            if a.get(q):
                say(f"  {q.upper()}. {a[q]['sentence']}")
        for warning in a.get("warnings", []):
            say(f"  [yellow]warning[/yellow]: {warning}")
    say(f"report: {study / 'report.html'} (also report.md, results.csv, results.json, plots/)")
    return answers


def model_blocks(model: dict | None) -> list[Block]:
    """The model to ship: which run `model/` holds, why, how to load it, and what it costs as
    PyTorch float32, ONNX float32 and ONNX int8."""
    if not model:
        return []
    b: list[Block] = [("h2", "The model to ship")]
    if "error" in model:
        b.append(("p", f"The chosen run ({model['student']}, {model['config']}, seed {model['seed']}) could not be "
                       f"written to model/: {model['error']}"))  # fmt: skip
        return b
    how = ('timm.create_model("local-dir:model", pretrained=True) or mtkd.load_student("local-dir:model")'
           if model["library"] == "timm" else 'mtkd.load_student("local-dir:model")')  # fmt: skip
    b.append(("p", f"[model/](model/README.md) holds {model['student']}, {model['config']}, seed {model['seed']}: "
                   f"the configuration best on validation ({100 * model['config_val_acc']:.2f}% mean over seeds) at its "
                   f"seed best on validation ({100 * model['val_acc']:.2f}%); the test split chose nothing. Its test "
                   f"accuracy is {100 * model['test_acc']:.2f}%. Load it with {how}; its README.md is a Hugging Face "
                   "model card; `mtkd export RUN --format hf --push ORG/NAME` uploads such a folder."))  # fmt: skip
    d = model.get("deployed")
    table = [["PyTorch float32", f"{100 * model['test_acc']:.2f}%",
              f"{model['latency_ms']:.3f}" if model.get("latency_ms") else "", ""]]  # fmt: skip
    if d:
        table += [["ONNX float32 (onnxruntime)", f"{100 * d['float_acc']:.2f}%", f"{d['float_ms']:.3f}", f"{d['float_bytes'] / 1e6:.2f} MB"],
                  ["ONNX int8 (onnxruntime)", f"{100 * d['int8_acc']:.2f}%", f"{d['int8_ms']:.3f}", f"{d['int8_bytes'] / 1e6:.2f} MB"]]  # fmt: skip
    b.append(
        ("table", ["the chosen student as", "test acc", "latency ms/image (1 thread)", "file size"], table)
    )
    if d:
        loss = 100 * (d["float_acc"] - d["int8_acc"])
        b.append(("p", f"**int8 loses {loss:.2f} points of accuracy (more than 1): ship the float file.**" if loss > 1
                  else f"int8 (static, calibrated on {d['calibration_images']} training images) changes test accuracy "
                       f"by {-loss:+.2f} points at {d['float_ms'] / d['int8_ms']:.2f}x the float file's speed."))  # fmt: skip
    else:
        b.append(("p", "No ONNX files: onnxruntime is not installed (pip install 'mtkd[export]')."))
    return b


def search_blocks(
    cfg: StudyConfig, rows: list[dict], records: dict, answers: dict, study: Path
) -> list[Block]:
    """Screening (every candidate, its cost and proxies, with their rank correlation to the
    full-schedule outcome), the search's steps and spending, the curve along its path and each
    member's contribution, on the confirmation seeds."""
    from mtkd.study.search import leave_one_out_rows, screening_table

    level = look_level(cfg.alpha, cfg.looks)
    how = reading_of(cfg)
    confirm = [r for r in rows if r["kind"] == "teacher" or r.get("stage", "confirm") == "confirm"]
    groups_by_student = student_groups(confirm)
    b: list[Block] = []
    for student in answers:
        record = records.get(student)
        screen = screening_table(rows, records, student)
        if not screen["candidates"]:
            continue
        b.append(("h2", f"Screening the pool{f' ({student})' if len(answers) > 1 else ''}"))
        methods = sorted(
            {m for c in screen["candidates"] for m in c["screen"]}
            | {m for c in screen["candidates"] for m in c["outcome"]}
        )
        table = []
        for c in sorted(screen["candidates"], key=lambda c: -c["val"][0]):
            lat = f"{c['latency_ms']:.2f}" if c.get("latency_ms") else ""
            cells = [c["teacher"], _acc(*c["val"]) if c["seeds"] > 1 else _acc(c["val"][0]), f"{c['params']:,}",
                     f"{c['macs'] / 1e6:.1f}M", lat]  # fmt: skip
            for m in methods:
                sv, ov = c["screen"].get(m), c["outcome"].get(m)
                cells += [_acc(sv) if sv is not None else "", _acc(ov) if ov is not None else ""]
            table.append(cells)
        head = ["candidate", "own val acc", "params", "MACs/image", "latency ms"]
        for m in methods:
            head += [f"{m}: screening val acc", f"{m}: full-schedule test acc (alone from it)"]
        b.append(("table", head, table))
        proxies = [[p["proxy"], p["method"], str(p["n"]), f"{p['rho']:+.2f}" if p["rho"] is not None else "n/a (under 3 candidates)"]
                   for p in screen["proxies"]]  # fmt: skip
        if proxies:
            b.append(("p", "Can a cheap proxy rank the candidates? Spearman's rank correlation of each proxy with the "
                           "test accuracy a student reaches from that candidate alone at the full schedule, over the "
                           "candidates the study ran both for (1: the same order; 0: no relation)."))  # fmt: skip
            b.append(("table", ["proxy", "method", "candidates", "Spearman rho"], proxies))
        if record is None or record.strategy == "grid":
            continue
        b.append(("h2", f"The search ({record.strategy}){f', {student}' if len(answers) > 1 else ''}"))
        budget = (
            f"a budget of {record.budget:g}"
            if record.budget is not None
            else "no budget set (the whole pool)"
        )
        b.append(("p", f"{len(record.shortlist)} of {len(screen['candidates'])} candidates searched, with {budget}; "
                       f"spent {record.spent:.2f} student-run equivalents (a full-schedule run is 1) on screening and "
                       f"search, against {record.grid_runs} runs for the grid of every teacher set up to "
                       f"{cfg.max_teachers} with every method at {len(cfg.first_seeds)} seed(s). Search seeds "
                       f"{', '.join(map(str, cfg.search_seeds))}; the answers use only seeds "
                       f"{', '.join(map(str, cfg.seed_pool))}."))  # fmt: skip
        if record.strategy == "greedy":
            steps = [[s["method"], str(s["size"]), str(s["tried"]), " + ".join(s["best"]), _acc(s["val"]),
                      f"{100 * s['gain']:+.2f}" if "gain" in s else ""] for s in record.steps]  # fmt: skip
            b.append(("table", ["method", "teachers", "sets tried", "best set (validation)", "its val acc",
                                "gain (points)"], steps))  # fmt: skip
            for s in record.steps:
                if s.get("stop"):
                    b.append(("p", f"**Stopped** ({s['method']}): {s['stop']}."))
        else:
            steps = [[str(s["rung"]), str(s["epochs"]), str(s["seeds"]), str(s["configs"]), str(s["promoted"]),
                      "; ".join(s["best"])] for s in record.steps]  # fmt: skip
            b.append(
                (
                    "table",
                    ["rung", "epochs", "seeds", "configurations", "promoted", "best on validation"],
                    steps,
                )
            )
        for note in record.notes:
            b.append(("p", f"**Note**: {note}"))
        if record.chosen:
            b.append(("p", f"**Chosen**: {record.chosen[0]} from {' + '.join(record.chosen[1])}."))
        groups = groups_by_student.get(student, [])
        by_key = {(g.method, g.teachers): g for g in groups}
        alone = by_key.get(("none", ()))
        curve = []
        for key in record.path:
            g = by_key.get(key)
            if g is None or alone is None:
                continue
            iv = paired(g, alone, how)
            curve.append([str(len(key[1])), " + ".join(key[1]), str(len(g.rows)), _acc(*g.stat("test_acc")),
                          _diff(iv.to_dict()), _ci(iv.to_dict())])  # fmt: skip
        if curve:
            b.append(
                (
                    "h3",
                    "Accuracy against the number of teachers, along the search's path (confirmation seeds)",
                )
            )
            b.append(
                (
                    "table",
                    ["teachers", "set", "seeds", "test acc", "vs alone (points)", f"{100 * level:.4g}% CI"],
                    curve,
                )
            )
        loo = leave_one_out_rows(groups, record, how)
        if loo:
            b.append(
                ("h3", "What each member of the chosen set contributes (leave one out, confirmation seeds)")
            )
            b.append(("table", ["member", "the set without it", "chosen - without (points)", f"{100 * level:.4g}% CI"],
                      [[x["member"], x["without"], _diff(x["interval"]), _ci(x["interval"])] for x in loo]))  # fmt: skip
    return b
