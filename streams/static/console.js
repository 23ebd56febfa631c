// The console's charts (uPlot) and ring graphs (Cytoscape.js). Data comes as JSON, from the
// console's API or from <script type="application/json"> blocks; text from events is only
// ever drawn by the libraries on a canvas or set with textContent, never parsed as HTML.
"use strict";

(function () {
  const STEP_S = 10;

  function chart(el, title, series, data, height) {
    const width = Math.max(320, el.clientWidth || 800);
    return new uPlot({ title: title, width: width, height: height || 220, series: series }, data, el);
  }

  async function drawSeries() {
    const rate = document.getElementById("chart-rate");
    const money = document.getElementById("chart-money");
    if (!rate || !money) return;
    const response = await fetch(rate.dataset.series, { credentials: "same-origin" });
    if (!response.ok) return;
    const s = await response.json();
    const perSecond = s.decisions.map(function (n) { return n / STEP_S; });
    const toMoney = function (cents) { return cents.map(function (c) { return c / 100; }); };
    chart(rate, "decisions / s", [{}, { label: "decisions/s", stroke: "#2563eb" }], [s.t, perSecond]);
    chart(money, "rebate per 10 s", [
      {},
      { label: "requested", stroke: "#64748b" },
      { label: "granted", stroke: "#16a34a" },
      { label: "held", stroke: "#d97706" },
      { label: "withheld", stroke: "#dc2626" },
    ], [s.t, toMoney(s.requested), toMoney(s.granted), toMoney(s.held), toMoney(s.withheld)]);
    rate.dataset.drawn = String(s.t.length);
  }

  const COLOURS = { user: "#2563eb", merchant: "#16a34a", device: "#9333ea", ip: "#d97706", card: "#dc2626" };

  function drawRing() {
    const holder = document.getElementById("ring-graph");
    const block = document.getElementById("ring-data");
    if (!holder || !block) return;
    const graph = JSON.parse(block.textContent);
    const elements = [];
    graph.nodes.forEach(function (n) {
      elements.push({ data: { id: n.id, label: n.label, kind: n.kind, member: n.member ? 1 : 0 } });
    });
    graph.edges.forEach(function (e, i) {
      elements.push({ data: { id: "e" + i, source: e.source, target: e.target, kind: e.kind, n: e.n } });
    });
    const cy = cytoscape({
      container: holder,
      elements: elements,
      layout: { name: "cose", animate: false, randomize: false },
      style: [
        { selector: "node", style: {
          "label": "data(label)", "font-size": 9, "width": 18, "height": 18,
          "background-color": function (n) { return COLOURS[n.data("kind")] || "#888"; } } },
        { selector: "node[member = 1]", style: { "border-width": 3, "border-color": "#111" } },
        { selector: "node[kind = 'merchant']", style: { "shape": "round-rectangle" } },
        { selector: "edge", style: { "width": 1.5, "line-color": "#94a3b8", "curve-style": "bezier" } },
        { selector: "edge[kind = 'referral']", style: {
          "target-arrow-shape": "triangle", "line-color": "#2563eb", "target-arrow-color": "#2563eb" } },
        { selector: "edge[kind = 'payment']", style: { "line-color": "#16a34a", "label": "data(n)", "font-size": 8 } },
      ],
    });
    holder.dataset.nodes = String(cy.nodes().length);
    holder.dataset.edges = String(cy.edges().length);
    window.rgRingGraph = cy;
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawRing();
    drawSeries();
  });
})();
