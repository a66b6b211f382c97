"""A bounded soak of the patched llama-server with pruning: many requests, a few at a time, some of them bad.

Starts `llama-server --topv-keep 0.25` on 127.0.0.1 with a tiny generated pair (topv_edge.lab.synth), sends
--requests chat completions --concurrency at a time, --bad-share of them bad inputs (bad image bytes, an empty
image URL, a missing field, more pictures than a slot's context holds, pruned), then checks:

  * every good request answers 200 with a message;
  * every bad input gets a 4xx;
  * the server is alive and healthy at the end;
  * its RSS (VmRSS) grew by less than --max-rss-growth percent from the end of the warm-up (--warmup requests)
    to the end, and no tenth of the rest raised its high-water mark by more than --max-rss-step percent.

The server runs with MALLOC_ARENA_MAX=2 (--malloc-arena-max; 0 keeps glibc's default). Why: llama-server reads
each request's pictures on one of its HTTP threads (8 fixed threads at -np 4), and glibc's malloc gives every
thread an arena of its own that keeps the high-water mark of the largest request it served. With the default
arenas the RSS therefore climbs for the first dozens of requests, until every HTTP thread has served a request
with 32 pictures, and then stays flat (56 -> 212 MB over 20 such requests, flat from there); with 1 arena it
stays at one request's high-water mark (56 -> 76 MB), with 2 at about 83 MB over 1500 requests. That is allocator retention, not a leak, and the bound
checked here is then a leak check: memory that grows with the number of requests shows in either setting.

Prints a table per kind of request, writes JSON (--out) and exits 1 when a check fails. Stdlib only (urllib).

    python scripts/soak_server.py                               # 300 requests, 4 at a time, 10 % bad
    python scripts/soak_server.py --requests 60 --warmup 20 --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import io
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is in the picture?"
REQUEST_TIMEOUT_S = 120
STARTUP_TIMEOUT_S = 120

# the statuses each bad input may get: the client's error, never the server's (an empty image URL: patches/41)
BAD_STATUS: dict[str, Callable[[int], bool]] = {
    "bad_image_bytes": lambda s: 400 <= s < 500,
    "empty_image_url": lambda s: 400 <= s < 500,
    "missing_messages": lambda s: 400 <= s < 500,
    "too_many_images": lambda s: 400 <= s < 500,
}


@dataclass
class Result:
    index: int
    kind: str
    status: int          # HTTP status; 0 when no response came (connection refused or reset, timeout)
    ms: float
    ok: bool             # the outcome this kind expects
    detail: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(seed: int) -> bytes:
    from topv_edge.lab.synth import demo_image

    buf = io.BytesIO()
    demo_image((336, 336), seed=seed).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def chat_body(parts: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    # cache_prompt false: the server would otherwise reuse the cached prompt of an identical request and never
    # encode, probe or prune its picture again
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}],
            "max_tokens": max_tokens, "temperature": 0, "cache_prompt": False}


class Payloads:
    """The request bodies of each kind (bytes), built once: good ones alternate two pictures."""

    def __init__(self, max_tokens: int, too_many: int, seed: int) -> None:
        pictures = [data_uri(png_bytes(s)) for s in (3, 4)]
        rng = random.Random(seed)
        junk = bytes(rng.getrandbits(8) for _ in range(4096))
        dump = lambda body: json.dumps(body).encode()
        self.good = [dump(chat_body([image_part(p)], max_tokens)) for p in pictures]
        self.bad = {
            "bad_image_bytes": dump(chat_body([image_part(data_uri(b"\x89PNG\r\n\x1a\n" + junk))], max_tokens)),
            "empty_image_url": dump(chat_body([image_part("")], max_tokens)),
            "missing_messages": dump({"max_tokens": max_tokens, "temperature": 0}),
            "too_many_images": dump(chat_body([image_part(pictures[0])] * too_many, max_tokens)),
        }
        assert set(self.bad) == set(BAD_STATUS)

    def plan(self, n: int, bad_share: float, warmup: int, seed: int, kinds: list[str], burst: int) -> list[str]:
        """n request kinds, round(n * bad_share) of them bad (the kinds in turn). The warm-up ends with `burst`
        consecutive copies of each bad kind, which the pool sends at once: every allocator arena then holds the
        high-water mark of the heaviest request (32 pictures at once on each HTTP thread), so the RSS baseline
        taken after the warm-up is the level glibc keeps, and what grows after it grows with the requests.
        The other bad requests fall at seeded random indices after the warm-up."""
        n_bad = round(n * bad_share)
        n_burst = min(n_bad, warmup, len(kinds) * burst)
        plan = ["good"] * n
        for k in range(n_burst):
            plan[warmup - n_burst + k] = kinds[k // burst % len(kinds)]
        rng = random.Random(seed)
        for k, i in enumerate(sorted(rng.sample(range(warmup, n), n_bad - n_burst))):
            plan[i] = kinds[k % len(kinds)]
        return plan

    def body(self, kind: str, index: int) -> bytes:
        return self.good[index % len(self.good)] if kind == "good" else self.bad[kind]


def post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:  # refused, reset, timed out: the server did not answer
        return 0, str(e).encode()


def run_one(url: str, payloads: Payloads, index: int, kind: str) -> Result:
    t0 = time.perf_counter()
    status, raw = post(url, payloads.body(kind, index))
    ms = (time.perf_counter() - t0) * 1e3
    if kind == "good":
        ok, detail = status == 200, ""
        if ok:
            try:
                ok = json.loads(raw)["choices"][0]["message"]["content"] is not None
            except (ValueError, KeyError, IndexError, TypeError) as e:
                ok, detail = False, f"bad reply: {e!r}"
        if not ok and not detail:
            detail = raw[:300].decode("utf-8", "replace")
    else:
        ok = BAD_STATUS[kind](status)
        detail = "" if ok else raw[:300].decode("utf-8", "replace")
    return Result(index, kind, status, ms, ok, detail)


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(binary: Path, model: Path, mmproj: Path, port: int, log: Any, args: argparse.Namespace
                 ) -> subprocess.Popen:
    cmd = [str(binary), "-m", str(model), "--mmproj", str(mmproj), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(args.threads), "-c", str(args.ctx), "-np", str(args.concurrency),
           "--topv-keep", str(args.keep), *args.server_arg]
    env = dict(os.environ)
    if args.malloc_arena_max > 0:  # see the module's docstring
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not healthy(port):
        if server.poll() is not None:
            raise RuntimeError(f"llama-server exited with {server.returncode} while starting")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"llama-server was not healthy within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.3)
    return server


def run_phase(url: str, payloads: Payloads, plan: list[str], indices: range, concurrency: int) -> list[Result]:
    with cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda i: run_one(url, payloads, i, plan[i]), indices))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summarise(results: list[Result], seconds: float, rss: dict[str, int], alive: bool,
              args: argparse.Namespace) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in ["good", *BAD_STATUS]:
        rs = [r for r in results if r.kind == kind]
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        ms = [r.ms for r in rs]
        kinds[kind] = {"n": len(rs), "failed": sum(not r.ok for r in rs), "statuses": statuses,
                       "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1)}
    growth = 100.0 * (rss["end_kb"] - rss["after_warmup_kb"]) / rss["after_warmup_kb"]
    # the largest rise of the high-water mark in one tenth of the run: glibc may hand memory back and take it
    # again up to the level it held before (that is no growth), a leak raises the mark tenth after tenth
    marks = list(itertools.accumulate([rss["after_warmup_kb"], *rss["samples_kb"]], max))
    max_step = 100.0 * max(b - a for a, b in zip(marks, marks[1:])) / rss["after_warmup_kb"]
    failures = [asdict(r) for r in results if not r.ok]
    checks = {"good_all_ok": kinds["good"]["failed"] == 0,
              "bad_all_rejected": all(kinds[k]["failed"] == 0 for k in BAD_STATUS),
              "server_alive": alive,
              "rss_growth_under_bound": growth < args.max_rss_growth,
              "rss_levels_off": max_step < args.max_rss_step}
    return {"config": {"requests": args.requests, "concurrency": args.concurrency, "bad_share": args.bad_share,
                       "warmup": args.warmup, "keep": args.keep, "ctx": args.ctx, "threads": args.threads,
                       "max_tokens": args.max_tokens, "too_many_images": args.too_many_images,
                       "family": args.family, "seed": args.seed, "bad_kinds": args.bad_kinds, "server_args": args.server_arg,
                       "malloc_arena_max": args.malloc_arena_max},
            "seconds": round(seconds, 2), "requests_per_s": round(len(results) / seconds, 2),
            "kinds": kinds, "rss": {**rss, "growth_pct": round(growth, 2), "max_growth_pct": args.max_rss_growth,
                                       "max_step_pct": round(max_step, 2), "max_step_bound_pct": args.max_rss_step},
            "checks": checks, "ok": all(checks.values()), "failures": failures[:20]}


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'kind':<18}{'n':>5}{'failed':>8}  {'statuses':<22}{'p50 ms':>9}{'p95 ms':>9}")
    for kind, k in summary["kinds"].items():
        statuses = ",".join(f"{s}x{n}" for s, n in sorted(k["statuses"].items()))
        print(f"{kind:<18}{k['n']:>5}{k['failed']:>8}  {statuses:<22}{k['p50_ms']:>9.1f}{k['p95_ms']:>9.1f}")
    rss = summary["rss"]
    print(f"{summary['requests_per_s']:.2f} requests/s over {summary['seconds']:.1f} s; VmRSS "
          f"{rss['start_kb'] / 1024:.1f} MiB at start, {rss['after_warmup_kb'] / 1024:.1f} after the warm-up, "
          f"{rss['end_kb'] / 1024:.1f} at the end ({rss['growth_pct']:+.2f} %, bound {rss['max_growth_pct']} %)")
    for name, passed in summary["checks"].items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from topv_edge.lab.synth import write_pair
    from topv_edge.llama.build import program

    binary = program("llama-server")
    model, mmproj = write_pair(args.family, "tiny", args.models, seed=0)
    payloads = Payloads(args.max_tokens, args.too_many_images, args.seed)
    plan = payloads.plan(args.requests, args.bad_share, args.warmup, args.seed, args.bad_kinds, args.concurrency)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    log_path = Path(args.log or (Path(tempfile.gettempdir()) / f"soak_server_{port}.log"))
    with open(log_path, "wb") as log:
        server = start_server(binary, model, mmproj, port, log, args)
        try:
            rss = {"start_kb": vm_rss_kb(server.pid)}
            t0 = time.perf_counter()
            results = run_phase(url, payloads, plan, range(args.warmup), args.concurrency)
            rss["after_warmup_kb"] = vm_rss_kb(server.pid)
            # the rest in tenths, sampling the RSS after each: retention levels off, a leak climbs steadily
            bounds = [args.warmup + round(k * (args.requests - args.warmup) / 10) for k in range(11)]
            rss["samples_kb"] = []
            for lo, hi in zip(bounds, bounds[1:]):
                results += run_phase(url, payloads, plan, range(lo, hi), args.concurrency)
                rss["samples_kb"].append(vm_rss_kb(server.pid) if server.poll() is None else 0)
            seconds = time.perf_counter() - t0
            alive = server.poll() is None and healthy(port)
            rss["end_kb"] = rss["samples_kb"][-1]
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
    summary = summarise(results, seconds, rss, alive, args)
    summary["server_log"] = str(log_path)
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4, help="requests at a time (and the server's -np)")
    ap.add_argument("--bad-share", type=float, default=0.10, help="share of bad inputs (default 0.10)")
    ap.add_argument("--bad-kinds", nargs="+", choices=list(BAD_STATUS), default=list(BAD_STATUS),
                    help="the bad inputs sent, in turn (default: all)")
    ap.add_argument("--warmup", type=int, default=50, help="requests before the RSS baseline (default 50)")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="percent, after the warm-up (default 5)")
    ap.add_argument("--max-rss-step", type=float, default=2.0,
                    help="percent of the baseline by which one tenth of the run after the warm-up may raise the RSS "
                         "high-water mark (default 2)")
    ap.add_argument("--keep", default="0.25", help="the server's --topv-keep (default 0.25)")
    ap.add_argument("--ctx", type=int, default=1024,
                    help="the server's -c, shared by its slots (default 1024: 256 cells a slot at -np 4, which a "
                         "good request's 64-token picture fits unpruned and --too-many-images pictures do not, pruned)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=4, help="answer tokens per good request (default 4)")
    ap.add_argument("--too-many-images", type=int, default=32,
                    help="pictures in the oversized request: more than a slot's context holds even after pruning "
                         "(the server admits by kept cells, patches/43; default 32: 512 kept cells of the tiny pair)")
    ap.add_argument("--family", default="llava", help="the tiny generated pair's family (default llava)")
    ap.add_argument("--models", type=Path, default=REPO / "models", help="where the tiny pair is generated")
    ap.add_argument("--malloc-arena-max", type=int, default=2, metavar="N",
                    help="the server's MALLOC_ARENA_MAX (glibc; default 2, 0: glibc's default of one arena per "
                         "thread, whose RSS plateaus higher: see above)")
    ap.add_argument("--seed", type=int, default=0, help="where the bad inputs fall, and their junk bytes")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="one more llama-server argument (repeat it: --server-arg=--cache-ram --server-arg=0)")
    ap.add_argument("--log", help="the server's log (default: a file in the temporary directory)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "soak_server.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (0 < args.warmup < args.requests) or args.concurrency < 1 or not 0 <= args.bad_share < 1:
        raise SystemExit("need 0 < --warmup < --requests, --concurrency >= 1 and 0 <= --bad-share < 1")
    summary = soak(args)
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # the checkout's topv_edge (sys.path[0] is scripts/)
    sys.exit(main())
