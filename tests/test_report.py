"""Tests of reglab report: finding runs and sweeps, the figures, the page (and that it renders
in headless Chromium with every figure decoded). Runs are written by hand: no training."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import select
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from reglab.cli import main
from reglab.reports.figures import lambda_axis
from reglab.reports.load import ReportError, collect
from reglab.reports.page import write_report


def fake_run(path: Path, l2: float, seed: int, acc: float, *, params: dict | None = None,
             state: str | None = "COMPLETE", norms: bool = True, split: str = "holdout",
             steps: int = 40) -> Path:  # fmt: skip
    """A run directory as the loop writes it: config.yaml, metrics.jsonl, summary.json (when
    finished) and, for sweep trials, trial.json. Accuracy rises towards ``acc``."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": "airbench", "l2": l2, "seed": seed,
                                                      "lr": 0.2, "threads": 1}))  # fmt: skip
    rows = []
    for step in range(10, steps + 1, 10):
        f = step / steps
        train = {"step": step, "epoch": f, "split": "train", "loss": 2.3 - f, "acc": acc * f + 0.06,
                 "lr": 0.1, "penalty": l2, "elapsed": step}  # fmt: skip
        if norms:
            train["weight_norm/conv.weight"] = 20 - 50 * l2 * f
            train["weight_norm/linear.weight"] = 2 - 5 * l2 * f
        rows.append(train)
        rows.append({"step": step, "epoch": f, "split": split, "loss": 2.4 - f, "acc": acc * f,
                     "lr": 0.1, "penalty": l2, "elapsed": step})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if state in ("COMPLETE", None):
        (path / "summary.json").write_text(json.dumps({
            "val_split": split, "final_val_acc": acc, "best_val_acc": acc + 0.002,
            "best_val_step": steps - 10, "final_train_acc": acc + 0.06, "final_val_loss": 1.4,
            "total_seconds": 30.0 + seed, "steps": steps, "val_images": 10_000,
        }))  # fmt: skip
    if state is not None:
        trial = {"state": state, "params": {**(params or {"l2": l2}), "seed": seed},
                 "failure": {"kind": "died", "message": "its worker is gone"}
                 if state == "FAIL" else None}  # fmt: skip
        (path / "trial.json").write_text(json.dumps(trial))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """λ ∈ {0, 1e-4, 1e-3, 1e-2} x 2 seeds; 1e-3 best; one killed attempt; a --final result."""
    root = tmp_path / "l2-sweep"
    accs = {0.0: 0.80, 1e-4: 0.81, 1e-3: 0.84, 1e-2: 0.78}
    n = 0
    for seed in (0, 1):
        for l2, acc in accs.items():
            fake_run(root / "trials" / f"{n:04d}-l2={l2:g}_seed={seed}", l2, seed,
                     acc + 0.004 * seed)  # fmt: skip
            n += 1
    fake_run(root / "trials" / f"{n:04d}-l2=0.01_seed=9", 1e-2, 9, 0.5, state="FAIL")
    (root / "sweep.yaml").write_text(yaml.safe_dump({"command": "reglab sweep --grid l2=..."}))
    final = root / "final"
    fake_run(final, 1e-3, 0, 0.835, state=None, split="test")
    (final / "final.json").write_text(json.dumps({
        "setting": "l2=0.001", "holdout": {"mean": 0.842, "std": 0.003, "seeds": 2},
        "test": {"acc": 0.835, "images": 10_000}, "train_images": 50_000,
    }))  # fmt: skip
    return root


def test_a_sweep_is_found_and_its_failed_attempt_is_not_a_result(sweep):
    col = collect([sweep])
    assert col.kind == "sweep" and len(col.runs) == 9 and len(col.results) == 8
    (failed,) = [r for r in col.runs if r.status == "failed"]
    assert "died" in failed.reason
    assert [f.info["setting"] for f in col.finals] == ["l2=0.001"]


def test_sweep_report_has_every_figure_table_and_the_recommendation(sweep):
    page_path = write_report([sweep])
    assert page_path == sweep / "report.html"
    for name in ("curves.png", "accuracy.png", "weight_norms.png"):
        png = sweep / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    page = page_path.read_text()
    assert page.count('<img src="data:image/png;base64,') == 3  # self-contained
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    # the settings table is sorted by holdout accuracy, best first, with time per run
    table = page.split("Settings, by holdout accuracy", 1)[1]
    order = [table.index(f"<td class=\"l\">l2={v}</td>") for v in ("0.001", "0.0001", "0", "0.01")]
    assert order == sorted(order)
    assert "84.20% ± 0.28 (2 seeds)" in page  # mean ± std over seeds
    assert "time per run (s)" in page and "holdout acc, final" in page
    assert "Best on the holdout set: l2=0.001" in page and "the choice is clear" in page
    assert "test acc (once)" in page and "83.50%" in page  # the --final result, labelled
    assert "its worker is gone" in page  # the failed attempt, explained


def test_lambda_zero_and_rule_values(sweep):
    axis = lambda_axis(collect([sweep]).runs)
    assert axis.name == "l2" and axis.of["l2=0"] == 0.0 and axis.of["l2=0.001"] == 1e-3
    runs = collect([sweep]).runs[:2]
    runs[0].params, runs[1].params = {"reg": "wd=0.0005"}, {"reg": "wd=0.005"}
    axis = lambda_axis(runs)
    assert axis.label == "λ of wd rules (reg)" and sorted(axis.of.values()) == [5e-4, 5e-3]
    runs[1].params = {"reg": "l1=0.005"}  # different methods: no common λ
    assert lambda_axis(runs) is None


def test_loose_runs_are_compared_by_what_differs(tmp_path, capsys):
    for i, l2 in enumerate((0.0, 5e-4)):
        fake_run(tmp_path / "runs" / f"r{i}", l2, seed=0, acc=0.8 + i / 100, state=None,
                 norms=False)  # fmt: skip
    col = collect([tmp_path / "runs"])
    assert col.kind == "runs" and [r.params for r in col.runs] == [{"l2": 0.0}, {"l2": 0.0005}]
    assert main(["report", str(tmp_path / "runs")]) == 0
    page = (tmp_path / "runs" / "report.html").read_text()
    assert "No weight norms in these metrics" in page
    assert not (tmp_path / "runs" / "figures" / "weight_norms.png").exists()
    assert "one seed" in page or "1 seed" in page


def test_one_run_and_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "one", 1e-4, 0, 0.8, state=None)
    assert collect([run]).kind == "run"
    page = write_report([run]).read_text()
    assert "Only one setting" in page and page.count("<img") == 2  # curves and weight norms
    with pytest.raises(ReportError, match="no runs in"):
        collect([_empty(tmp_path)])
    code = main(["report", str(run), str(run)])
    assert code == 2 and "--out DIR" in capsys.readouterr().err


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_zero_lambda_is_drawn_at_a_marked_position(sweep):
    from reglab.reports import figures as F
    from reglab.sweeps.select import rank

    col = collect([sweep])
    fig = F.accuracy_vs_lambda(rank(col.results), lambda_axis(col.runs))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.get_xscale() == "log" and labels[0] == "0" and "1e-4" in labels
    zero = ax.get_xticks()[0]
    assert 0 < zero < 1e-4 and math.log10(1e-4 / zero) >= 1  # a decade or more left of 1e-4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class ChromiumError(Exception):
    pass


class Chromium:
    """Headless Chromium driven from outside over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: it reads NUL-terminated JSON commands on its fd 3 and writes
    replies and events on its fd 4). Nothing is added to the page under test. Every wait is
    bounded by one deadline, and the browser's whole process group is killed on exit."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe")  # fmt: skip

    def __init__(self, profile: Path, log: Path, timeout: float = 30.0):
        self.deadline = time.monotonic() + timeout
        self.log = log
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()
        # the child's ends, moved above 9 so that dup2 onto 3 and 4 cannot overwrite one another
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)
        argv = [CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"]
        redirect = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, ends[0], 3),
            (os.POSIX_SPAWN_DUP2, ends[1], 4),
        ]
        try:  # in a session of its own: its process group is the browser and its children
            self.pid = os.posix_spawn(CHROMIUM, argv, os.environ, file_actions=redirect,
                                      setsid=True)  # fmt: skip
        except BaseException:
            os.close(self._to_browser)
            os.close(self._from_browser)
            raise
        finally:
            for fd in ends:
                os.close(fd)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        try:  # ask it to quit, and give it a moment to do so (its end of the pipe closes)
            self.deadline = min(self.deadline, time.monotonic() + 3)
            self._send("Browser.close")
            while True:
                self._message()
        except (OSError, ChromiumError):
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # it and its renderers, whatever happened
            os.waitpid(self.pid, 0)
            os.close(self._to_browser)
            os.close(self._from_browser)

    def _send(self, method: str, session: str | None = None, **params) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _message(self) -> dict:
        """The next message from the browser (a reply or an event), within the deadline."""
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ChromiumError(f"chromium: no answer in time; its log:\n{self.tail()}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ChromiumError(f"chromium closed the pipe (exited?); its log:\n{self.tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        wanted = self._send(method, session, **params)
        while True:
            message = self._message()
            if message.get("id") == wanted:
                assert "error" not in message, (method, message["error"])
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, session: str | None = None) -> dict:
        """Wait for the event ``method`` (of ``session``), kept or still to come."""
        def match(m: dict) -> bool:
            return m.get("method") == method and m.get("sessionId") == session

        while not any(match(m) for m in self.events):
            self.events.append(self._message())
        return next(m for m in self.events if match(m))

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


# Evaluated in the loaded page: every image decoded (decode() resolves and naturalWidth > 0), and
# the structure a reader sees.
INSPECT = """
Promise.all(Array.from(document.images, (img) =>
  img.decode().then(() => img.naturalWidth, () => 0).then((width) => ({
    width, complete: img.complete, src: img.getAttribute("src").slice(0, 22) }))
)).then((images) => ({
  images,
  title: document.title,
  h1: Array.from(document.querySelectorAll("h1"), (h) => h.textContent),
  h2: Array.from(document.querySelectorAll("h2"), (h) => h.textContent),
  tables: Array.from(document.querySelectorAll("table"), (t) => t.tBodies[0].rows.length),
  scripts: document.scripts.length,
}))
"""


def _problems(events: list[dict], session: str) -> list[str]:
    """JS exceptions, console and browser-log errors, failed loads, and requests for anything
    but the page itself and its data: URLs, reported by the browser for ``session``."""
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if e.get("sessionId") != session:
            continue
        if method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append(f"console.{params['type']}: {params['args']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log: {params['entry']}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:")):
                found.append(f"request: {url[:200]}")
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium_with_every_figure(sweep, tmp_path):
    """The page as a user gets it, opened in headless Chromium and inspected from outside over
    the DevTools protocol: it loads, every figure decodes, no errors, the expected sections."""
    page = write_report([sweep])
    with Chromium(tmp_path / "profile", tmp_path / "chromium.log") as browser:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target,
                               flatten=True)["sessionId"]  # fmt: skip
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session)
        nav = browser.call("Page.navigate", session, url=page.resolve().as_uri())
        assert "errorText" not in nav, nav
        browser.wait_for("Page.loadEventFired", session)
        seen = browser.call("Runtime.evaluate", session, expression=INSPECT, awaitPromise=True,
                            returnByValue=True)  # fmt: skip
        assert "exceptionDetails" not in seen, seen["exceptionDetails"]
        seen = seen["result"]["value"]
        assert _problems(browser.events, session) == []
    images = seen["images"]
    assert len(images) == 3, images  # curves, accuracy against λ, weight norms
    for img in images:
        assert img["complete"] and img["width"] > 0, img
        assert img["src"] == "data:image/png;base64,", img
    title = "reglab report: l2-sweep"
    assert seen["title"] == title and seen["h1"] == [title]  # the title is just the title
    assert seen["scripts"] == 0  # nothing for tests (or anything else) runs in the page
    assert seen["h2"] == ["Recommendation", "Test set (evaluated once, by --final)",
                          "Settings, by holdout accuracy", "Figures", "Runs",
                          "Not counted as results", "Conventions"]  # fmt: skip
    assert seen["tables"] == [1, 4, 9]  # the --final result, the settings, the runs


def test_a_run_with_its_penalty_left_out_is_compared_as_lambda_zero():
    """--no-penalty-in-loss (the tutorial's run as it ran): the report compares it as the λ that
    acted, 0, not as the λ it declared."""
    from reglab.reports.load import acting

    declared = {"l2": 0.0, "regularizers": ["l2-half=1e-4", "decay-per-step=1e-3@norm"],
                "penalty_in_loss": False}  # fmt: skip
    assert acting(declared) == {
        "l2": 0.0, "regularizers": ["l2-half=0", "decay-per-step=1e-3@norm"],
        "penalty_in_loss": True,
    }  # fmt: skip
    applied = {**declared, "penalty_in_loss": True}
    assert acting(applied) is applied
