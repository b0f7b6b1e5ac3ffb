// Draws each binding's last hours (from /overview.json) with uPlot:
// messages done, retried and dead-lettered per minute, and handle-duration
// percentiles. Refreshed every 15 seconds. Names are set as text, never as
// markup.
"use strict";
(function () {
  const box = document.getElementById("charts");
  if (!box || typeof uPlot === "undefined") {
    return;
  }
  const charts = new Map();
  const seconds = (values) => values.map((v) => (v === null ? null : v));

  function chart(key, title, series, data, unit) {
    let entry = charts.get(key);
    const width = Math.max(320, Math.min(640, box.clientWidth - 16));
    if (!entry) {
      const holder = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = title;
      holder.appendChild(caption);
      box.appendChild(holder);
      const plot = new uPlot(
        {
          width: width,
          height: 180,
          series: [{}].concat(series),
          axes: [{}, { size: 64, values: (u, ticks) => ticks.map((t) => t + unit) }],
          scales: { x: { time: true } },
        },
        data,
        holder
      );
      entry = { plot: plot };
      charts.set(key, entry);
    } else {
      entry.plot.setData(data);
    }
  }

  async function draw() {
    let response;
    try {
      response = await fetch("/overview.json", { credentials: "same-origin" });
    } catch (err) {
      return;
    }
    if (!response.ok) {
      return;
    }
    const overview = await response.json();
    for (const b of overview.bindings) {
      const at = b.series.at;
      chart(
        "counts:" + b.name,
        b.name + ": messages per minute",
        [
          { label: "done", stroke: "#2a9d4b" },
          { label: "retried", stroke: "#e0a100" },
          { label: "dead-lettered", stroke: "#b00020" },
        ],
        [at, b.series.done, b.series.retried, b.series.dead_lettered],
        ""
      );
      chart(
        "durations:" + b.name,
        b.name + ": handle duration (s)",
        [
          { label: "p50", stroke: "#3366cc", points: { show: true, size: 5 } },
          { label: "p95", stroke: "#8e44ad", points: { show: true, size: 5 } },
          { label: "p99", stroke: "#c0392b", points: { show: true, size: 5 } },
        ],
        [at, seconds(b.series.p50), seconds(b.series.p95), seconds(b.series.p99)],
        "s"
      );
    }
    box.dataset.drawn = String(charts.size);
  }

  draw();
  setInterval(draw, 15000);
})();
