"""Output of test-backend-ops: console (ggml's look), csv and sql (ggml's columns)."""
from __future__ import annotations

import csv
import datetime
import io
import re
import sys
from collections import defaultdict

from .grad import SKIPPED
from .harness import CaseResult
from .harness import op_cases

# ggml's test_result::get_fields(), in its order, so csv/sql rows join with ggml's own
FIELDS = ["test_time", "build_commit", "backend_name", "op_name", "op_params", "test_mode",
          "supported", "passed", "error_message", "time_us", "flops", "bandwidth_gb_s",
          "memory_kb", "n_runs", "device_description", "backend_reg_name"]
_INT = {"supported", "passed", "memory_kb", "n_runs"}
_FLOAT = {"time_us", "flops", "bandwidth_gb_s"}
# csv_printer::get_fields_csv(): ggml's csv keeps these (in FIELDS' order) and no times
CSV_FIELDS = [f for f in FIELDS if f in {"op_name", "op_params", "supported", "error_message",
                                         "test_mode", "backend_reg_name", "backend_name"}]

GREEN, RED, BLUE, RESET = "\033[1;32m", "\033[1;31m", "\033[1;34m", "\033[0m"

# error_message as ggml writes it per mode and status (details go to the console / stderr)
_ERROR_MESSAGE = {("test", "FAIL"): "compare failed", ("test", "ERROR"): "test failed",
                  ("perf", "FAIL"): "test failed", ("perf", "ERROR"): "test failed"}


def _values(r: CaseResult) -> dict:
    """ggml's test_result::get_values(): every field as the string ggml prints (bools as 1/0,
    doubles with %f). Perf: FLOPS when the op counts flops, else bandwidth in GiB/s (ggml
    divides bytes by 1024^3 and calls it GB/s), never both."""
    from .. import __version__
    supported = r.status != "NOT SUPPORTED"
    secs = r.us_per_run / 1e6 if r.us_per_run else 0.0
    flops = (r.flops / secs) if secs and r.flops else 0.0
    bandwidth = (r.nbytes / secs / 1024 ** 3) if secs and not r.flops else 0.0
    if r.mode == "support":
        message = "yes" if supported else "no"
    elif not supported:
        message = "not supported"
    else:
        message = _ERROR_MESSAGE.get((r.mode, r.status), "")
    support = r.mode == "support"
    return {
        "test_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_commit": f"pyggml-{__version__}",
        "backend_name": r.backend, "op_name": r.case.op, "op_params": r.case.vars_str,
        "test_mode": r.mode, "supported": str(int(supported)),
        "passed": str(int(r.status == "OK" or (support and supported))),
        "error_message": message,
        "time_us": f"{r.us_per_run:f}", "flops": f"{flops:f}", "bandwidth_gb_s": f"{bandwidth:f}",
        "memory_kb": str(int(r.nbytes // 1024)), "n_runs": str(r.runs),
        "device_description": f"pyggml {r.backend}" if support else "",
        "backend_reg_name": r.backend if support else "",
    }


class ConsolePrinter:
    def __init__(self, mode: str, out=None):
        self.mode, self.out = mode, out if out is not None else sys.stdout
        self.color = self.out.isatty()

    def _c(self, color, s):
        return f"{color}{s}{RESET}" if self.color else s

    def header(self):
        pass

    def backend_start(self, i, n, name):
        if i == 0:
            print(f"Testing {n} devices\n", file=self.out)
        print(f"Backend {i + 1}/{n}: {name}\n  Device description: pyggml {name}\n", file=self.out)

    def note(self, s):
        print(s, file=self.out)

    def result(self, r: CaseResult):
        head = f"  {r.case.op}({r.case.vars_str}): "
        if r.status == "NOT SUPPORTED":       # ggml's perf line names no backend
            tail = "not supported" if self.mode == "perf" else f"not supported [{r.backend}] "
            if self.mode == "grad":           # eval_grad's lines: the reason, or the nmax skip
                tail = ("skipping large tensors for speed " if r.message.startswith(SKIPPED)
                        else f"not supported [{r.message or r.backend}] ")
            print(head + tail, file=self.out)
            return
        if self.mode == "support":
            print(head + self._c(GREEN, "SUPPORTED"), file=self.out)
        elif self.mode == "perf":
            if r.status != "OK":
                print(f"{head}{r.message} " + self._c(RED, "FAIL"), file=self.out)
                return
            pad = ((len(head) + 7) // 8) * 8
            pad += 8 if pad - len(head) < 5 else 0
            v = _values(r)
            tail = (f"{_flops(r.flops)}/run - " + self._c(BLUE, f"{_flops(float(v['flops']))}S")
                    if r.flops else f"{int(v['memory_kb']):8d} kB/run - "
                    + self._c(BLUE, f"{float(v['bandwidth_gb_s']):7.2f} GB/s"))
            print(f"{head}{' ' * (pad - len(head))}    {r.runs:8d} runs - {r.us_per_run:8.2f} us/run - "
                  + tail, file=self.out)
        else:
            if r.status == "OK":
                print(head + self._c(GREEN, "OK"), file=self.out)
            else:
                print(f"{head}{r.message} (node {r.node!r}) " + self._c(RED, "FAIL"), file=self.out)

    def backend_end(self, name, n_ok, n_total, ok, failed):
        print(f"  {n_ok}/{n_total} tests passed", file=self.out)
        print(f"  Backend {name}: " + self._c(GREEN if ok else RED, "OK" if ok else "FAIL"),
              file=self.out)
        if failed:
            print("\nFailing tests:", file=self.out)
            for f in failed:
                print(f"  {f}", file=self.out)
        print(file=self.out)

    def footer(self, n_backends, all_ok):
        n_ok = n_backends if all_ok else "<" + str(n_backends)
        print(f"{n_ok}/{n_backends} backends passed", file=self.out)
        print(self._c(GREEN, "OK") if all_ok else self._c(RED, "FAIL"), file=self.out)


def _flops(f: float) -> str:
    for unit, s in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if f >= unit:
            return f"{f / unit:6.2f} {s}"
    return f"{f / 1e3:6.2f} kFLOP"


class CsvPrinter:
    """ggml's csv_printer byte for byte: the CSV_FIELDS columns, every value in double quotes
    (quotes doubled), nothing else on stdout. Times are not in it: use --output sql."""

    def __init__(self, mode, out=None):
        self.out = out if out is not None else sys.stdout     # sys.stdout of now, not of import
        self.w = csv.writer(self.out, quoting=csv.QUOTE_ALL, lineterminator="\n")

    def header(self):
        self.w.writerow(CSV_FIELDS)

    def result(self, r):
        v = _values(r)
        self.w.writerow([v[f] for f in CSV_FIELDS])

    def note(self, s):
        print(s, file=sys.stderr)

    def backend_start(self, *a):
        pass

    def backend_end(self, name, n_ok, n_total, ok, failed):
        print(f"{name}: {n_ok}/{n_total} tests passed", file=sys.stderr)

    def footer(self, *a):
        pass


class SqlPrinter(CsvPrinter):
    def __init__(self, mode, out=None):
        self.out = out if out is not None else sys.stdout

    def header(self):
        cols = ",\n".join(f"  {f} {'INTEGER' if f in _INT else 'REAL' if f in _FLOAT else 'TEXT'}"
                          for f in FIELDS)
        print(f"CREATE TABLE IF NOT EXISTS test_backend_ops (\n{cols}\n);\n", file=self.out)

    def result(self, r):
        v = _values(r)
        vals = ", ".join("'" + v[f].replace("'", "''") + "'" for f in FIELDS)
        print(f"INSERT INTO test_backend_ops ({', '.join(FIELDS)}) VALUES ({vals});", file=self.out)


def make_printer(output: str, mode: str):
    return {"console": ConsolePrinter, "csv": CsvPrinter, "sql": SqlPrinter}[output](mode)


# --- perf baselines from ggml's own csv ----------------------------------------------------------

_PERF_LINE = re.compile(r"^  ([A-Z0-9_]+)\((.*)\):\s+(\d+) runs -\s+([0-9.]+) us/run - ")
_SQL_INSERT = re.compile(r"^INSERT INTO test_backend_ops \((.*?)\) VALUES \((.*)\);$")


def load_baseline(path: str) -> dict:
    """(op_name, op_params) -> time_us from ggml's perf output: `--output sql` (INSERT lines),
    the console (`OP(vars): N runs - T us/run - ...`), or a csv that has a time_us column.
    ggml's own `--output csv` carries no times: that file is refused with a hint."""
    from ..errors import GGMLError
    try:
        with open(path, newline="") as f:
            text = f.read()
    except OSError as e:
        raise GGMLError(f"--baseline {path}: {e.strerror or e}") from None
    out = {}
    lines = text.splitlines()
    if any(line.startswith("INSERT INTO test_backend_ops") for line in lines):
        for line in lines:
            m = _SQL_INSERT.match(line)
            if m:
                row = dict(zip([c.strip() for c in m.group(1).split(",")],
                               (v[1:-1] for v in re.findall(r"'(?:[^']|'')*'", m.group(2)))))
                _add_time(out, row.get("op_name"), row.get("op_params"), row.get("time_us"))
    elif lines and lines[0].startswith('"'):
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "time_us" not in rows[0]:
            raise GGMLError(f"--baseline {path}: ggml's csv has no times; write the baseline "
                            f"with test-backend-ops perf --output sql (or save the console)")
        for row in rows:
            _add_time(out, row.get("op_name"), row.get("op_params"), row.get("time_us"))
    else:
        for line in lines:
            m = _PERF_LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
            if m:
                _add_time(out, m.group(1), m.group(2), m.group(4))
    if not out:       # a wrong file would otherwise join nothing, silently
        raise GGMLError(f"--baseline {path}: no timed cases found; expected the output of "
                        f"ggml's test-backend-ops perf (--output sql, or the console)")
    return out


def _add_time(out: dict, op, params, time_us) -> None:
    try:
        t = float(time_us or 0)
    except ValueError:
        return
    if op and t > 0:
        out[(op, params or "")] = t


def baseline_key(op: str, vars_str: str, baseline: dict):
    """The baseline's key for a case: its exact string, else the string without trailing
    vars at 0 that an older ggml did not print yet (MUL_MAT's src_overlap=0 is newer than
    some builds' test-backend-ops). None when the baseline has neither."""
    if (op, vars_str) in baseline:
        return op, vars_str
    parts = vars_str.split(",")
    while parts and parts[-1].endswith("=0") and "[" not in parts[-1] and "]" not in parts[-1]:
        parts.pop()
        if (op, ",".join(parts)) in baseline:
            return op, ",".join(parts)
    return None


def print_baseline_ratios(results, baseline: dict, out=None) -> None:
    out = out if out is not None else sys.stdout
    per_op = defaultdict(list)
    print("\nratio to baseline (pyggml time / baseline time; < 1 is faster):", file=out)
    for r in results:
        key = baseline_key(r.case.op, r.case.vars_str, baseline)
        if key is not None and r.us_per_run > 0:
            ratio = r.us_per_run / baseline[key]
            per_op[r.case.op].append(ratio)
            print(f"  {r.case.op}({r.case.vars_str}): {ratio:6.2f}x", file=out)
    print("per op (geometric mean):", file=out)
    import math
    for op, rs in sorted(per_op.items()):
        g = math.exp(sum(math.log(x) for x in rs) / len(rs))
        print(f"  {op:<24} {g:6.2f}x over {len(rs)} cases", file=out)


def _kernel_mark(backend, op) -> str:
    """'yes' when the backend has a kernel for op, 'no' when it has none (or says so)."""
    if op.view:
        return "view"
    table = getattr(backend, "kernels", None)
    if table is None:
        table = getattr(backend, "kernel_table", None)
    if table is not None:
        entry = table.get(op.name)
        return "yes" if entry is not None and getattr(entry, "variants", [entry]) else "no"
    if backend.name == "reference":
        return "yes" if op.reference is not None else "no"
    if backend.name == "ggml":
        return "yes" if op.ggml is not None else "no"
    return "?"


def coverage(backends) -> str:
    """Table of ops: case count, reference, ggml recipe, kernel per backend; then totals."""
    from ..ops.registry import OPS
    buf = io.StringIO()
    names = [b.name for b in backends]
    print(f"{'op':<28} {'cases':>6} {'ref':>4} {'ggml':>5} " + " ".join(f"{n:>8}" for n in names),
          file=buf)
    n_cases = 0
    have = defaultdict(int)
    missing = defaultdict(list)
    computed = [n for n in sorted(OPS) if not OPS[n].view]
    for name in sorted(OPS):
        op = OPS[name]
        n = len(op_cases(op)) if op.cases else 0
        n_cases += n
        ks = []
        for b in backends:
            k = _kernel_mark(b, op)
            ks.append(k)
            if not op.view:
                if k == "yes":
                    have[b.name] += 1
                else:
                    missing[b.name].append(name)
        print(f"{name:<28} {n:>6} {'view' if op.view else 'yes' if op.reference else 'NO':>4} "
              f"{'yes' if op.ggml else 'no':>5} " + " ".join(f"{k:>8}" for k in ks), file=buf)
    print(f"\n{len(OPS)} ops ({len(computed)} computed, {len(OPS) - len(computed)} views), "
          f"{n_cases} cases", file=buf)
    for b in backends:
        print(f"  {b.name}: kernels for {have[b.name]}/{len(computed)} computed ops"
              + (f"; missing: {', '.join(missing[b.name])}" if missing[b.name] else ""), file=buf)
    return buf.getvalue()
