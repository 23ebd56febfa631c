'use strict';
// The report's charts and ring graphs, drawn from its JSON blocks (JSON.parse, never eval).
// Ids in the data come from events anyone may send: they reach the page only as text, through
// uPlot's and Cytoscape's canvas drawing and textContent; this script writes no HTML.
(function () {
  function block(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function widthOf(el) {
    return Math.max(320, Math.floor(el.getBoundingClientRect().width));
  }
  function money(c) {
    return (c / 100).toLocaleString('en-US', {minimumFractionDigits: 2, maximumFractionDigits: 2});
  }
  function pct(v) {
    return v == null ? '' : (v * 100).toFixed(2) + '%';
  }
  function say(el, text) {
    const p = document.createElement('p');
    p.className = 'note';
    p.textContent = text;
    el.appendChild(p);
  }

  function moneyChart() {
    const d = block('money-data');
    const el = document.getElementById('money-chart');
    if (!d || !el) return;
    if (d.x.length === 0) { say(el, 'No decisions.'); return; }
    const series = [{label: d.bucket === 'hour' ? 'hour (UTC)' : 'day (UTC)'}].concat(
      d.series.map(s => ({label: s.label, stroke: s.color, width: 2,
        value: (u, v) => v == null ? '' : money(v)})));
    const data = [d.x].concat(d.series.map(s => s.cents));
    new uPlot({
      width: widthOf(el), height: 320, series: series,
      tzDate: ts => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      axes: [{}, {size: 90, values: (u, vals) => vals.map(money)}],
    }, data, el);
  }

  function solvencyChart() {
    const d = block('solvency-data');
    const el = document.getElementById('solvency-chart');
    if (!d || !el) return;
    if (d.x.length === 0) { say(el, 'No platform reading.'); return; }
    const ratio = (u, v) => v == null ? '' : v.toFixed(2);
    new uPlot({
      width: widthOf(el), height: 300,
      tzDate: ts => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      scales: {y: {range: (u, lo, hi) => [0, Math.max(hi, d.critical[0] * 1.1)]}},
      series: [
        {label: 'period end (UTC)'},
        {label: 'liability : distributable', stroke: '#1f77b4', width: 2, value: ratio},
        {label: 'warning line', stroke: '#ff7f0e', width: 1, dash: [6, 4], value: ratio},
        {label: 'critical line', stroke: '#d62728', width: 1, dash: [6, 4], value: ratio},
      ],
      axes: [{}, {size: 60}],
    }, [d.x, d.ratio, d.warning, d.critical], el);
  }

  function curveChart() {
    const d = block('curve-data');
    const el = document.getElementById('curve-chart');
    if (!d || !el) return;
    const xs = d.legit_share.slice();
    const line = d.fraud_share.slice();
    const mine = xs.map(() => null);
    let at = xs.findIndex(x => x > d.point.legit);
    if (at < 0) at = xs.length;
    xs.splice(at, 0, d.point.legit);
    line.splice(at, 0, null);
    mine.splice(at, 0, d.point.fraud);
    const value = (u, v) => pct(v);
    new uPlot({
      width: widthOf(el), height: 360,
      scales: {x: {time: false, range: [0, d.x_max]}, y: {range: [0, 1]}},
      series: [
        {label: 'legitimate money withheld', value: value},
        {label: 'best single weight cut', stroke: '#1f77b4', width: 2, spanGaps: true, value: value},
        {label: 'this replay', stroke: '#d62728', fill: '#d62728', width: 0, paths: () => null,
         points: {show: true, size: 12, fill: '#d62728'}, value: value},
      ],
      axes: [
        {label: 'legitimate rebate money withheld', values: (u, vals) => vals.map(pct)},
        {label: 'fraud rebate money withheld', size: 70, values: (u, vals) => vals.map(pct)},
      ],
    }, [xs, line, mine], el);
  }

  const GRAPH_STYLE = [
    {selector: 'node', style: {'label': 'data(label)', 'font-size': 9, 'text-valign': 'bottom',
      'text-margin-y': 2, 'width': 14, 'height': 14, 'background-color': '#1f77b4',
      'min-zoomed-font-size': 7, 'color': '#333'}},
    {selector: 'node[kind = "merchant"]', style: {'background-color': '#ff7f0e',
      'shape': 'round-rectangle', 'width': 24, 'height': 24, 'font-size': 11}},
    {selector: 'node[kind = "device"]', style: {'background-color': '#2ca02c', 'shape': 'diamond'}},
    {selector: 'node[?abusive]', style: {'border-width': 3, 'border-color': '#d62728'}},
    {selector: 'edge', style: {'width': 1, 'line-color': '#c7c7c7', 'curve-style': 'haystack'}},
    {selector: 'edge[kind = "payment"]', style: {'line-color': '#f5b26b',
      'width': 'mapData(payments, 1, 20, 1, 6)'}},
    {selector: 'edge[kind = "referral"]', style: {'line-color': '#9467bd', 'width': 2,
      'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'target-arrow-color': '#9467bd'}},
  ];

  // A pyramid: its users as the referral tree (breadth first from the roots), merchants in a
  // row below, shared devices in a row above.
  function tree(cy, roots) {
    const users = cy.nodes('[kind = "user"]');
    const start = cy.collection(roots.map(id => cy.getElementById(id)));
    users.union(cy.edges('[kind = "referral"]')).layout({name: 'breadthfirst', directed: true,
      roots: start, animate: false, fit: false, spacingFactor: 0.9}).run();
    const box = users.boundingBox();
    const row = (nodes, y) => nodes.forEach((n, i) =>
      n.position({x: box.x1 + (i + 1) * box.w / (nodes.length + 1), y: y}));
    row(cy.nodes('[kind = "merchant"]'), box.y2 + 120);
    row(cy.nodes('[kind = "device"]'), box.y1 - 120);
    cy.fit(undefined, 16);
  }

  function ringGraphs() {
    const rings = block('rings-data') || [];
    rings.forEach((ring, i) => {
      const el = document.getElementById('ring-graph-' + i);
      if (!el) return;
      const style = ring.user_labels ? GRAPH_STYLE : GRAPH_STYLE.concat(
        [{selector: 'node[kind = "user"]', style: {'label': '', 'width': 10, 'height': 10}}]);
      const cy = cytoscape({container: el, elements: ring.elements, style: style, maxZoom: 1.6,
        layout: {name: ring.tree_roots ? 'preset' : 'cose', animate: false, randomize: false}});
      if (ring.tree_roots) tree(cy, ring.tree_roots);
    });
  }

  for (const draw of [moneyChart, solvencyChart, curveChart, ringGraphs]) {
    try {
      draw();
    } catch (err) {
      console.error(err);
    }
  }
})();
