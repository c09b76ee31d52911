"""Renders deploy/grafana/dashboards/switchyard.json against a live Prometheus into one PNG:
each panel's queries run through Prometheus' range API, drawn in the dashboard's layout.
Used for the README's picture where no Grafana is at hand; needs matplotlib.

  python deploy/grafana/render_preview.py --prometheus http://127.0.0.1:9092 \
      --minutes 10 --out docs/img/fleet-dashboard.png
"""

import argparse
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "switchyard.json"


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate-interval", default="30s")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    all_value = {v["name"]: v.get("allValue", ".+") for v in dash["templating"]["list"]}
    end = time.time()
    start = end - a.minutes * 60
    rows = (len(panels) + 1) // 2
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.1 * rows), squeeze=False)
    fig.suptitle(f"{dash['title']}: flag = All, variation = All (last {a.minutes:g} min)", fontsize=14)
    for ax, p in zip(axes.flat, panels):
        ax.set_title(p["title"], fontsize=10, loc="left")
        ax.grid(alpha=0.2)
        for t in p["targets"]:
            expr = (
                t["expr"]
                .replace("$__rate_interval", a.rate_interval)
                .replace("$__range", f"{int(a.minutes)}m")
                .replace("$flag", all_value.get("flag", ".+"))
                .replace("$variation", all_value.get("variation", ".+"))
            )
            for s in query_range(a.prometheus, expr, start, end, max(2, int(a.minutes * 60 / 300))):
                xs = [(float(v[0]) - end) / 60 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                live = any(y != 0 and y == y for y in ys)
                # Series that stay at zero are drawn but left out of the legend.
                name = legend(t.get("legendFormat", ""), s["metric"]) if live else "_zero"
                ax.plot(xs, ys, linewidth=1.2, label=name)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_xlabel("minutes ago" if unit else "", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        handles, labels = ax.get_legend_handles_labels()
        shown = [(h, l) for h, l in zip(handles, labels) if not l.startswith("_")][:10]
        if shown:
            ax.legend(*zip(*shown), fontsize=6, loc="upper left", ncol=2, framealpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=80)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
